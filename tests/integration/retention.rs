//! Results and events partitioned by frame time: partitions made on demand, dropped past
//! retention without holding up the inbox, a scenario keeping less, and the migration that
//! moved an existing table over.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, TestApp};
use hyper::StatusCode;
use serde_json::json;

const DAY_MS: i64 = 86_400_000;

/// A result of `frame`, stamped with that frame's time (as a runner would).
fn result_at(scenario: uuid::Uuid, frame: i64, epoch: chrono::DateTime<chrono::Utc>) -> (uuid::Uuid, Vec<u8>) {
    let at = epoch + chrono::Duration::milliseconds(frame);
    let value = json!({"scenario_uuid": scenario, "frame_number": frame, "timestamp": at.to_rfc3339(),
                       "detections": [{"class": "person", "confidence": 0.9, "bbox": [1.0, 2.0, 3.0, 4.0]}]});
    (scenario, serde_json::to_vec(&value).unwrap())
}

/// The relay's retention pass on `app`'s database, with `settings`.
fn retention_with(app: &TestApp, settings: vap_core::config::RetentionSettings) -> vap_relay::retention::Retention {
    vap_relay::retention::Retention {
        pool: app.pool.clone(),
        database: app.settings.database.clone(),
        window: Arc::new(vap_relay::retention::Window::new(&settings)),
        settings,
        metrics: Arc::new(vap_core::metrics::Metrics::default()),
    }
}

/// A scenario created `days` ago (its frame numbers count from then).
async fn scenario_from(
    app: &TestApp,
    days: i64,
    options: serde_json::Value,
) -> (uuid::Uuid, chrono::DateTime<chrono::Utc>) {
    let id = app.create_scenario_with("rtsp://127.0.0.1:9/retention", options).await;
    let client = app.pool.get().await.unwrap();
    let epoch = client
        .query_one(
            "UPDATE scenarios SET created_at = now() - make_interval(days => $2) WHERE scenario_uuid = $1 RETURNING created_at",
            &[&id, &(days as i32)],
        )
        .await
        .unwrap()
        .get(0);
    (id, epoch)
}

async fn frames_of(app: &TestApp, id: uuid::Uuid) -> Vec<i64> {
    let client = app.pool.get().await.unwrap();
    let rows = client
        .query("SELECT frame_number FROM scenario_results WHERE scenario_uuid = $1 ORDER BY 1", &[&id])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn partitions(app: &TestApp, table: &str) -> Vec<vap_relay::retention::partitions::Partition> {
    let client = app.pool.get().await.unwrap();
    vap_relay::retention::partitions::list(&**client, table).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_past_retention_are_dropped_while_the_inbox_goes_on_and_a_scenario_may_keep_less() {
    let mut app = TestApp::spawn_with(|s| {
        s.relay.metrics_listen = format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap())
    })
    .await;
    // retention_days is checked like every option.
    for (bad, why) in [(json!(0), "from 1 to 36500"), (json!(2.5), "whole number"), (json!("7"), "whole number")] {
        let r = app
            .post_json("/api/v1/scenario/init", &json!({"camera_url": "rtsp://127.0.0.1:9/x", "retention_days": bad}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.json()["error"]["field"], "retention_days", "{}", r.text);
        assert!(r.text.contains(why), "{}", r.text);
    }
    let (kept, kept_epoch) = scenario_from(&app, 40, json!({})).await;
    let (short, short_epoch) = scenario_from(&app, 40, json!({})).await;
    // Frames 40 days old (past the 30 days kept: not stored), 25 and 15 days old (stored in
    // partitions made for them), and of the last minute.
    let (old, mid, late, recent) = (1_000, 15 * DAY_MS, 25 * DAY_MS, 40 * DAY_MS - 60_000);
    let mut records = Vec::new();
    for (id, epoch) in [(kept, kept_epoch), (short, short_epoch)] {
        records.extend([old, mid, late, recent].map(|f| result_at(id, f, epoch)));
    }
    app.produce_results(records).await;
    app.start_relay();
    eventually(Duration::from_secs(30), "the frames within retention stored", || async {
        (frames_of(&app, kept).await.len() == 3 && frames_of(&app, short).await.len() == 3).then_some(())
    })
    .await;
    assert_eq!(frames_of(&app, kept).await, vec![mid, late, recent]);
    // The two frames past retention are counted, not stored.
    let metrics = common::reqwest_text(&format!("http://{}/metrics", app.settings.relay.metrics_listen)).await;
    assert!(metrics.contains("vap_inbox_expired_total 2"), "{metrics}");
    // Set now, so that the relay's own passes can't have applied it before the frames came.
    let r = app.patch_json(&format!("/api/v1/scenario/{short}"), &json!({"retention_days": 10})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.scenario(short).await["options"]["retention_days"], 10);
    let made = partitions(&app, "scenario_results").await;
    let day_of = |t: chrono::DateTime<chrono::Utc>| t.format("%Y%m%d").to_string();
    let mid_day = day_of(kept_epoch + chrono::Duration::milliseconds(mid));
    assert!(made.iter().any(|p| p.name.contains(&mid_day)), "no partition for {mid_day}: {made:?}");

    // A reader holding the old partition open: dropping it waits for the reader, the inbox
    // does not wait for the drop.
    let mut reader = app.pool.get().await.unwrap();
    let reading = reader.transaction().await.unwrap();
    reading.query("SELECT count(*) FROM scenario_results", &[]).await.unwrap();
    let mut settings = app.settings.retention.clone();
    settings.results_days = 20;
    let retention = retention_with(&app, settings);
    let pass = tokio::spawn(async move { retention.pass().await });
    // The drop queues behind the reader's lock, as PostgreSQL shows it.
    eventually(Duration::from_secs(15), "the drop waiting for the reader's lock", || async {
        (app.scalar("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").await > 0).then_some(())
    })
    .await;
    assert!(!pass.is_finished(), "the drop should wait for the open reader");
    let later = recent + 30_000;
    app.produce_results(vec![result_at(kept, later, kept_epoch)]).await;
    eventually(Duration::from_secs(15), "a result stored while the drop waits", || async {
        frames_of(&app, kept).await.contains(&later).then_some(())
    })
    .await;
    assert!(!pass.is_finished(), "the drop should still be waiting for the reader");
    reading.commit().await.unwrap();
    let pass = tokio::time::timeout(Duration::from_secs(30), pass).await.expect("pass ends").unwrap().unwrap();
    assert!(pass.dropped.iter().any(|name| name.contains(&mid_day)), "{pass:?}");
    // 20 days kept: the 25-day-old partition went whole, the 15-day-old frame stays.
    assert_eq!(frames_of(&app, kept).await, vec![late, recent, later]);
    // The scenario keeping 10 days loses its 15-day-old frame too, row by row.
    // (By this pass or by the relay's own, whichever ran after the patch.)
    assert_eq!(frames_of(&app, short).await, vec![recent]);
    let left = partitions(&app, "scenario_results").await;
    assert!(left.iter().all(|p| !p.name.contains(&mid_day)), "{left:?}");
    // Partitions for today and the next two days exist.
    let now = chrono::Utc::now();
    for ahead in 0..=2 {
        let t = now + chrono::Duration::days(ahead);
        assert!(left.iter().any(|p| p.lower <= t && t < p.upper), "no partition for {t}: {left:?}");
    }
    // The API serves what is left, in frame order, page after page.
    let mut served = Vec::new();
    let mut after = -1;
    loop {
        let page = app.get(&format!("/api/v1/prediction/{kept}?limit=1&after_frame={after}")).await.json();
        served.extend(page["results"].as_array().unwrap().iter().map(|r| r["frame_number"].as_i64().unwrap()));
        match page["next_after_frame"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(served, vec![late, recent, later]);
}

#[tokio::test]
async fn the_migration_moves_stored_results_and_events_into_partitions() {
    let pg = common::cluster();
    let db = common::unique("m");
    pg.create_database(&db).await.unwrap();
    let settings = pg.settings(&db);
    let (mut client, connection) = vap_core::db::pg_config(&settings).connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    // The schema as it was before partitioning, with rows in it.
    client.batch_execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())").await.unwrap();
    for &(version, name, sql) in vap_core::db::migrate::MIGRATIONS.iter().filter(|m| m.0 < 13) {
        client.batch_execute(sql).await.unwrap();
        client
            .execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&version, &name])
            .await
            .unwrap();
    }
    client
        .batch_execute(
            "INSERT INTO scenarios (scenario_uuid, camera_url, status, created_at)
             VALUES ('00000000-0000-4000-8000-000000000001', 'rtsp://127.0.0.1:9/old', 'inactive', now() - interval '3 days');
             INSERT INTO scenario_results (scenario_uuid, frame_number, captured_at, detections)
             SELECT '00000000-0000-4000-8000-000000000001', g * 3600000, now(), '[]' FROM generate_series(0, 71) g;
             INSERT INTO scenario_events (event_id, scenario_uuid, kind, frame_number, occurred_at)
             SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', 'zone_entered', g * 3600000, now()
               FROM generate_series(0, 71, 10) g;
             INSERT INTO webhook_deliveries (event_id, scenario_uuid, url)
             SELECT event_id, scenario_uuid, 'http://127.0.0.1:9/hook' FROM scenario_events",
        )
        .await
        .unwrap();
    let seq_before: i64 = client.query_one("SELECT max(seq) FROM scenario_events", &[]).await.unwrap().get(0);
    let pending: Vec<i32> = vap_core::db::migrate::MIGRATIONS.iter().map(|m| m.0).filter(|v| *v >= 13).collect();
    assert_eq!(vap_core::db::migrate::run(&mut client).await.unwrap(), pending);
    let count = |table: &str| format!("SELECT count(*) FROM {table}");
    for (table, rows) in [("scenario_results", 72), ("scenario_events", 8), ("webhook_deliveries", 8)] {
        assert_eq!(client.query_one(&count(table), &[]).await.unwrap().get::<_, i64>(0), rows, "{table}");
    }
    // Three days of frames: three or four day partitions (and today's), each holding its day.
    let wrong: i64 = client
        .query_one(
            "SELECT count(*) FROM scenario_results r JOIN scenarios s USING (scenario_uuid)
              WHERE r.frame_time <> s.created_at + r.frame_number * interval '1 millisecond'
                 OR r.tableoid::regclass::text <> 'scenario_results_p' || to_char(r.frame_time AT TIME ZONE 'UTC', 'YYYYMMDD') || 't00'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
    // The events' sequence goes on from where it was.
    let next: i64 = client.query_one("SELECT nextval('scenario_events_seq_seq')", &[]).await.unwrap().get(0);
    assert!(next > seq_before, "{next} after {seq_before}");
    // A deleted scenario takes its moved rows and deliveries with it.
    client.execute("DELETE FROM scenarios", &[]).await.unwrap();
    for table in ["scenario_results", "scenario_events", "webhook_deliveries"] {
        assert_eq!(client.query_one(&count(table), &[]).await.unwrap().get::<_, i64>(0), 0, "{table}");
    }
}

/// Records set aside keep only their first 4 KiB (and how long they were), and are pruned by
/// age, by count per scenario (the newest stay) and by count in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_set_aside_keep_their_head_and_are_bounded_by_age_and_count() {
    let mut app = TestApp::spawn().await;
    let (a, b) = (app.create_scenario("rtsp://127.0.0.1:9/a").await, app.create_scenario("rtsp://127.0.0.1:9/b").await);
    let unsigned = |id: uuid::Uuid, frame: i64, padding: usize| {
        let mut v: serde_json::Value = serde_json::from_slice(&common::result_json(id, frame)).unwrap();
        v["padding"] = "x".repeat(padding).into();
        (id, serde_json::to_vec(&v).unwrap(), None)
    };
    app.start_relay();
    // a's first, then b's: the ids say which is older.
    app.produce_raw((0..5).map(|f| unsigned(a, f, if f == 0 { 100_000 } else { 0 })).collect()).await;
    eventually(Duration::from_secs(30), "a's five set aside", || async {
        (app.scalar("SELECT count(*) FROM dead_letters").await == 5).then_some(())
    })
    .await;
    app.produce_raw((0..3).map(|f| unsigned(b, f, 0)).collect()).await;
    eventually(Duration::from_secs(30), "eight records set aside", || async {
        (app.scalar("SELECT count(*) FROM dead_letters").await == 8).then_some(())
    })
    .await;
    let client = app.pool.get().await.unwrap();
    let big = client
        .query_one("SELECT length(record_value), value_bytes FROM dead_letters ORDER BY value_bytes DESC LIMIT 1", &[])
        .await
        .unwrap();
    assert_eq!(big.get::<_, i32>(0), 4096);
    assert!(big.get::<_, i32>(1) > 100_000);

    let ids = |key: uuid::Uuid| {
        let client = &client;
        async move {
            let rows = client
                .query(
                    "SELECT id FROM dead_letters WHERE record_key = convert_to($1::text, 'UTF8') ORDER BY id",
                    &[&key.to_string()],
                )
                .await
                .unwrap();
            rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
        }
    };
    let (before_a, before_b) = (ids(a).await, ids(b).await);
    // One of b's is old: gone by age whatever the counts.
    client
        .execute("UPDATE dead_letters SET received_at = now() - interval '15 days' WHERE id = $1", &[&before_b[2]])
        .await
        .unwrap();
    let mut settings = app.settings.retention.clone();
    (settings.dead_letters_days, settings.dead_letters_per_scenario, settings.dead_letters_max) = (14, 3, 4);
    let retention = retention_with(&app, settings);
    let pass = retention.pass().await.unwrap();
    // b: the old one goes (2 left); a: the newest 3 of 5 stay; in all 5 > 4: a's oldest left goes.
    assert_eq!(pass.deleted.dead_letters, 4, "{pass:?}");
    assert_eq!(ids(b).await, before_b[..2].to_vec());
    assert_eq!(ids(a).await, before_a[3..].to_vec());
}
