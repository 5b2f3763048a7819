//! Webhook delivery against loopback receivers that misbehave: one that never answers, one
//! that answers without end, one that always fails. Events are produced to `events` as a
//! runner would (signed), so no video is needed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use hmac::Mac;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{camera_offline_json, eventually, TestApp};

/// A Standard Webhooks secret: `whsec_` and the base64 of the key.
const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn secret() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(KEY))
}

async fn app(adjust: impl FnOnce(&mut vap_core::config::Settings) + Send + 'static) -> TestApp {
    let mut app = TestApp::spawn_with(move |s| {
        s.webhooks.secret = vap_core::config::Secret::new(secret());
        s.webhooks.poll_interval_ms = 100;
        adjust(s);
    })
    .await;
    app.start_relay();
    app
}

/// A receiver that accepts and never answers; counts connections open at once (the most).
async fn tarpit() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = Arc::clone(&most);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (open, most) = (Arc::clone(&open), Arc::clone(&most));
            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::spawn(async move {
                // Read until the sender gives up and closes; never answer.
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (url, seen)
}

/// What a receiver got: the Standard Webhooks headers and the body.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

/// A receiver that answers `status` with `answer_bytes` of body (streamed, so an endless one
/// can be offered), recording each request; also how many body bytes it got to write.
async fn receiver(status: u16, answer_bytes: usize) -> (String, Arc<Mutex<Vec<Delivery>>>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook?token=t", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let written = Arc::new(AtomicUsize::new(0));
    let (seen, wrote) = (Arc::clone(&got), Arc::clone(&written));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (seen, wrote) = (Arc::clone(&seen), Arc::clone(&wrote));
            tokio::spawn(async move {
                while let Some(delivery) = read_request(&mut stream).await {
                    vap_core::sys::lock(&seen).push(delivery);
                    let head = format!("HTTP/1.1 {status} X\r\ncontent-length: {answer_bytes}\r\n\r\n");
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut left = answer_bytes;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if stream.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        wrote.fetch_add(n, Ordering::SeqCst);
                        left -= n;
                    }
                }
            });
        }
    });
    (url, got, written)
}

/// One HTTP/1.1 request with a content-length body; None when the peer closed.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Delivery> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
    };
    // Names match in any case; values keep theirs (base64 signatures).
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
    }
    Some(Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: data[head_end..head_end + length].to_vec(),
    })
}

/// Checks a delivery as a Standard Webhooks verifier does: HMAC-SHA256 with the decoded key
/// over `id.timestamp.body`, base64, after `v1,`; the timestamp within five minutes.
fn verify(d: &Delivery) {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY).unwrap();
    mac.update(format!("{}.{}.", d.id, d.timestamp).as_bytes());
    mac.update(&d.body);
    let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    assert!(d.signature.split(' ').any(|s| s == expected), "signature {} is not {expected}", d.signature);
    let sent: i64 = d.timestamp.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent).abs() < 300, "timestamp {sent}");
    let event: Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(event["event_id"], d.id.as_str(), "webhook-id is the event id");
}

/// Sixty cameras post to a receiver that never answers (each try times out after 15 s), one to
/// a healthy one. The silent one holds at most its share of the sends (2 of 8), so the healthy
/// one's event arrives within seconds, signed as Standard Webhooks verifiers expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_receiver_holds_only_its_share_and_a_healthy_one_is_served_within_seconds() {
    let (slow, most_open) = tarpit().await;
    let (healthy, got, _) = receiver(204, 0).await;
    let app = app(|s| {
        s.webhooks.timeout_ms = 15_000;
        s.webhooks.concurrency = 8;
        s.webhooks.per_receiver_concurrency = 2;
    })
    .await;
    let mut silent_ones = Vec::new();
    for i in 0..60 {
        let options = serde_json::json!({"webhook_url": slow});
        silent_ones.push(app.create_scenario_with(&format!("rtsp://127.0.0.1:9/slow-{i}"), options).await);
    }
    let served =
        app.create_scenario_with("rtsp://127.0.0.1:9/served", serde_json::json!({"webhook_url": healthy})).await;
    let events = &app.settings.kafka.topic_events.clone();
    app.produce_signed(events, silent_ones.iter().map(|id| (*id, camera_offline_json(*id, 1))).collect()).await;
    // Queued behind the silent ones: the old sender sent eight at a time and waited for all.
    eventually(Duration::from_secs(30), "the silent receiver's deliveries queued", || async {
        (app.scalar("SELECT count(*) FROM webhook_deliveries").await == 60).then_some(())
    })
    .await;
    app.produce_signed(events, vec![(served, camera_offline_json(served, 1))]).await;
    let queued = std::time::Instant::now();
    eventually(Duration::from_secs(30), "the healthy receiver's delivery queued", || async {
        (app.scalar("SELECT count(*) FROM webhook_deliveries").await == 61).then_some(())
    })
    .await;
    // Sooner than one silent try times out (15 s): it never waited behind one.
    let delivered = eventually(Duration::from_secs(10), "the healthy receiver served", || async {
        vap_core::sys::lock(&got).first().cloned()
    })
    .await;
    eprintln!("healthy receiver served {:?} after its event was queued", queued.elapsed());
    verify(&delivered);
    let event: Value = serde_json::from_slice(&delivered.body).unwrap();
    assert_eq!(event["scenario_uuid"], served.to_string());
    assert!(
        most_open.load(Ordering::SeqCst) <= 2,
        "the silent receiver held {} sends",
        most_open.load(Ordering::SeqCst)
    );
    assert!(most_open.load(Ordering::SeqCst) >= 1, "the silent receiver was tried");
}

/// A receiver that answers 200 with a body without end: the answer is read only up to a small
/// bound, the delivery counts, and the relay does not take in the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_cut_off_and_the_delivery_counts() {
    const OFFERED: usize = 512 * 1024 * 1024;
    let (url, got, written) = receiver(200, OFFERED).await;
    let app = app(|_| {}).await;
    let id = app.create_scenario_with("rtsp://127.0.0.1:9/endless", serde_json::json!({"webhook_url": url})).await;
    app.produce_signed(&app.settings.kafka.topic_events.clone(), vec![(id, camera_offline_json(id, 1))]).await;
    eventually(Duration::from_secs(30), "delivered", || async {
        (app.scalar("SELECT count(*) FROM webhook_deliveries WHERE delivered_at IS NOT NULL").await == 1).then_some(())
    })
    .await;
    assert_eq!(vap_core::sys::lock(&got).len(), 1);
    // What the receiver got into socket buffers before the relay hung up, far from all of it.
    let sent = written.load(Ordering::SeqCst);
    assert!(sent < 32 * 1024 * 1024, "the relay read {sent} bytes of the answer");
}

/// A receiver that always fails is retried until `webhooks.max_age_secs`, then given up: the
/// event shows when, and the scenario's next event is tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_past_its_max_age_is_given_up_and_shown() {
    let (url, got, _) = receiver(500, 0).await;
    let app = app(|s| {
        s.webhooks.max_age_secs = 1;
        s.webhooks.retry_max_ms = 1_000;
    })
    .await;
    let id = app.create_scenario_with("rtsp://127.0.0.1:9/failing", serde_json::json!({"webhook_url": url})).await;
    app.produce_signed(
        &app.settings.kafka.topic_events.clone(),
        vec![(id, camera_offline_json(id, 1)), (id, camera_offline_json(id, 2))],
    )
    .await;
    let events = eventually(Duration::from_secs(30), "both given up", || async {
        let page = app.get(&format!("/api/v1/scenario/{id}/events")).await.json();
        let events = page["events"].as_array()?.clone();
        (events.len() == 2 && events.iter().all(|e| e["webhooks"][0]["gave_up_at"].is_string())).then_some(events)
    })
    .await;
    for e in &events {
        let w = &e["webhooks"][0];
        assert!(w["delivered_at"].is_null(), "{w}");
        assert_eq!(w["last_status"], 500, "{w}");
    }
    let tried: HashSet<String> = vap_core::sys::lock(&got).iter().map(|d| d.id.clone()).collect();
    assert_eq!(tried.len(), 2, "each event was tried before it was given up: {tried:?}");
}
