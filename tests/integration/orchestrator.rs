//! vap-orchestrator with the local backend, end to end: the real API, relay, broker,
//! PostgreSQL, orchestrator processes and runner processes on real media. What runs is sampled
//! from the machine (/proc), not from the orchestrator's own counters.

use crate::common;
use crate::fleet;
use crate::media;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{eventually, TestApp};
use fleet::{runner_processes, spawn_orchestrator, spawn_orchestrator_with, RunnerReaper};
use media::{free_port, media, RtspServer};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_runs_a_file_to_the_end_and_shuts_a_live_camera_down() {
    let app = TestApp::spawn_for_runners().await;
    let mut orchestrator = spawn_orchestrator(&app, 4);
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);

    // A file: placed, analysed, stored, and inactive when it ends (not restarted).
    let file = app.create_scenario(media().short.to_str().unwrap()).await;
    let live = app.create_scenario(&format!("rtsp://127.0.0.1:{port}/cam")).await;
    let _reaper = RunnerReaper(HashSet::from([file, live]));
    app.wait_for_status(file, "inactive", Duration::from_secs(90)).await;
    let done = eventually(Duration::from_secs(10), "the file's worker to be stopped", || async {
        let s = app.scenario(file).await;
        (s["worker"]["status"] == "stopped").then_some(s)
    })
    .await;
    assert_eq!(done["worker"]["backend"], "local", "{done}");
    let p = app.prediction(file).await;
    assert_eq!(p["total_frames_processed"], 10, "5 s at 2 fps: {p}");
    assert!(
        p["results"].as_array().unwrap().iter().filter(|r| !r["detections"].as_array().unwrap().is_empty()).count()
            >= 8,
        "{p}"
    );

    // A live camera: active with a running worker, until its shutdown.
    let running = app.wait_for_status(live, "active", Duration::from_secs(90)).await;
    let w = &running["worker"];
    assert_eq!((w["backend"].as_str(), w["status"].as_str()), (Some("local"), Some("running")), "{running}");
    assert!(w["backend_ref"].as_str().unwrap().starts_with("pid "), "{running}");
    assert!(w["node"].is_string() && w["started_at"].is_string(), "{running}");
    assert_eq!(runner_processes(&HashSet::from([live])).get(&live).map(Vec::len), Some(1));
    app.shutdown_scenario(live).await;
    let stopped = app.wait_for_status(live, "inactive", Duration::from_secs(30)).await;
    assert_eq!(stopped["worker"]["status"], "stopped", "{stopped}");
    assert!(runner_processes(&HashSet::from([live])).is_empty(), "runner still running after shutdown");
    let frames = app.prediction(live).await["total_frames_processed"].as_i64().unwrap();
    assert!(frames >= 1, "the live camera was analysed");
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_runners_get_the_runner_settings_and_none_of_the_orchestrators_secrets() {
    let app = TestApp::spawn_for_runners().await;
    // PostgreSQL trusts local connections here, so the password is ignored, but still passed.
    let mut orchestrator = spawn_orchestrator_with(
        &app,
        2,
        &[("VAP_DATABASE__PASSWORD", "hunter2-db"), ("VAP_API__AUTH_TOKEN", "hunter2-api")],
    );
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let live = app.create_scenario(&format!("rtsp://127.0.0.1:{port}/cam")).await;
    let _reaper = RunnerReaper(HashSet::from([live]));
    app.wait_for_status(live, "active", Duration::from_secs(90)).await;
    let pid = runner_processes(&HashSet::from([live]))[&live][0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<String> = environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    let names: Vec<&str> = vars.iter().filter_map(|v| v.split_once('=').map(|(k, _)| k)).collect();
    assert!(names.contains(&"VAP_KAFKA__BROKERS") && names.contains(&"VAP_RUNNER__MODELS_DIR"), "{names:?}");
    assert!(!vars.iter().any(|v| v.contains("hunter2")), "a secret reached the runner: {names:?}");
    assert!(!names.iter().any(|k| k.starts_with("VAP_DATABASE__") || k.starts_with("VAP_API__")), "{names:?}");
    app.shutdown_scenario(live).await;
    app.wait_for_status(live, "inactive", Duration::from_secs(30)).await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_workers_is_never_exceeded_and_every_scenario_is_processed() {
    let app = TestApp::spawn_for_runners().await;
    let mut orchestrator = spawn_orchestrator(&app, 3);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(app.create_scenario(media().short.to_str().unwrap()).await);
    }
    let set: HashSet<Uuid> = ids.iter().copied().collect();
    let _reaper = RunnerReaper(set.clone());
    // /proc sampled on a thread of its own, so the API polling below never slows it down.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (set, done) = (set.clone(), std::sync::Arc::clone(&done));
        move || {
            let (mut peak, mut samples) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let running = runner_processes(&set);
                peak = peak.max(running.values().map(Vec::len).sum::<usize>());
                assert!(running.values().all(|p| p.len() == 1), "a scenario has two runners: {running:?}");
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (peak, samples)
        }
    });
    let mut saw_waiting = false;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if !saw_waiting {
            for id in &ids {
                if app.scenario(*id).await["worker"]["status"] == "waiting" {
                    saw_waiting = true;
                    break;
                }
            }
        }
        let mut inactive = 0;
        for id in &ids {
            if app.scenario(*id).await["status"] == "inactive" {
                inactive += 1;
            }
        }
        if inactive == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {inactive} of 10 scenarios finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak, samples) = sampler.join().expect("the /proc sampler");
    assert!(peak <= 3, "{peak} runners at once with MAX_WORKERS=3");
    assert_eq!(peak, 3, "the cap was used (sampled {samples} times)");
    assert!(saw_waiting, "scenarios over the cap show as waiting");
    for id in &ids {
        assert_eq!(app.prediction(*id).await["total_frames_processed"], 10);
    }
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_from_a_killed_leader_without_duplicates_or_orphans() {
    let app = TestApp::spawn_for_runners().await;
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let url = format!("rtsp://127.0.0.1:{port}/cam");
    let mut leader = spawn_orchestrator(&app, 10);
    let first = app.create_scenario(&url).await;
    let mut set = HashSet::from([first]);
    app.wait_for_status(first, "active", Duration::from_secs(90)).await;
    // The first one leads (it placed the runner); the second stands by.
    let mut standby = spawn_orchestrator(&app, 10);
    let mut ids = vec![first];
    for _ in 0..4 {
        ids.push(app.create_scenario(&url).await);
    }
    set.extend(ids.iter().copied());
    let _reaper = RunnerReaper(set.clone());
    // Kill the leader while those start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    vap_core::sys::signal(leader.id(), vap_core::sys::SIGKILL);
    let _ = leader.wait();
    let killed_at = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running = runner_processes(&set);
        assert!(running.values().all(|p| p.len() == 1), "a scenario has two runners: {running:?}");
        let mut active = 0;
        for id in &ids {
            if app.scenario(*id).await["status"] == "active" {
                active += 1;
            }
        }
        if active == ids.len() && running.len() == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{active} of {} active, {} runners, {:?} after the kill",
            ids.len(),
            running.len(),
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The runner the dead leader started was adopted, not started again.
    for id in &ids {
        app.shutdown_scenario(*id).await;
    }
    for id in &ids {
        app.wait_for_status(*id, "inactive", Duration::from_secs(60)).await;
    }
    assert!(runner_processes(&set).is_empty(), "no orphans after shutdown");
    let _ = standby.kill();
    let _ = standby.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_runner_fails_its_scenario_after_the_restart_limit() {
    let app = TestApp::spawn_for_runners().await;
    // A stand-in that crashes at once with a code the runner uses for transient errors.
    let dir = tempfile::tempdir().unwrap();
    let crasher = dir.path().join("vap-runner");
    let metrics_listen = format!("127.0.0.1:{}", free_port());
    std::fs::write(&crasher, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&crasher, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut orchestrator = spawn_orchestrator_with(
        &app,
        2,
        &[
            ("VAP_ORCHESTRATOR__LOCAL__RUNNER_BIN", crasher.to_str().unwrap()),
            ("VAP_ORCHESTRATOR__LOCAL__RESTART_LIMIT", "2"),
            ("VAP_ORCHESTRATOR__LOCAL__RESTART_WINDOW_SECS", "60"),
            ("VAP_ORCHESTRATOR__LOCAL__RESTART_DELAY_MIN_MS", "100"),
            ("VAP_ORCHESTRATOR__METRICS_LISTEN", metrics_listen.as_str()),
        ],
    );
    let id = app.create_scenario("rtsp://camera.invalid/stream").await;
    let failed = app.wait_for_status(id, "failed", Duration::from_secs(60)).await;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("failed 3 times") && error.contains("exit code 1"), "{failed}");
    let w = &failed["worker"];
    assert_eq!(
        (w["backend"].as_str(), w["status"].as_str(), w["restarts"].as_i64()),
        (Some("local"), Some("failed"), Some(2)),
        "{failed}"
    );
    // Failed stays failed: no further starts, after rounds that would have started one.
    let rounds = || common::metric(&metrics_listen, "vap_orchestrator_reconcile_seconds_count");
    let failed_at = rounds().await.expect("the orchestrator's reconcile count");
    eventually(Duration::from_secs(30), "three more reconcile rounds", || async {
        rounds().await.filter(|n| *n >= failed_at + 3.0)
    })
    .await;
    assert_eq!(app.scenario(id).await["status"], "failed");
    assert_eq!(app.scenario(id).await["worker"]["restarts"], 2, "no start after the scenario failed");
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

/// One scenario's action fails every round (its worker row refuses the update, as a full disk
/// or a bad row would): the scenarios after it are still stopped when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_action_does_not_hold_back_the_rest_of_the_round() {
    let app = TestApp::spawn_for_runners().await;
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let camera = format!("rtsp://127.0.0.1:{port}/cam");
    // Created first, so its actions come first in every round.
    let stuck = app.create_scenario(&camera).await;
    let others = [app.create_scenario(&camera).await, app.create_scenario(&camera).await];
    let _reaper = RunnerReaper(HashSet::from([stuck, others[0], others[1]]));
    app.pool
        .get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_for_the_test() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'this row refuses updates'; END $$;
             CREATE TRIGGER refuse_for_the_test BEFORE UPDATE ON workers FOR EACH ROW
               WHEN (NEW.scenario_uuid = '{stuck}' AND NEW.status = 'running')
               EXECUTE FUNCTION refuse_for_the_test();"
        ))
        .await
        .unwrap();
    let mut orchestrator = spawn_orchestrator(&app, 4);
    for id in others {
        app.wait_for_status(id, "active", Duration::from_secs(90)).await;
        app.shutdown_scenario(id).await;
    }
    for id in others {
        let s = app.wait_for_status(id, "inactive", Duration::from_secs(30)).await;
        assert_eq!(s["worker"]["status"], "stopped", "{s}");
    }
    assert_eq!(app.scenario(stuck).await["worker"]["status"], "starting", "the refused update never happened");
    app.shutdown_scenario(stuck).await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

/// SIGTERM while the first round over a queue of 60,000 scenarios (MAX_WORKERS 1) is being
/// written: the orchestrator exits 0 within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_sixty_thousand_scenarios_queued_exits_within_five_seconds() {
    let app = TestApp::spawn().await;
    // A camera that accepts and never answers: the one runner placed waits in its open.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let camera = format!("rtsp://{}/cam", silent.local_addr().unwrap());
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO scenarios (scenario_uuid, camera_url, status)
             SELECT gen_random_uuid(), $1, 'init_startup' FROM generate_series(1, 60000)",
            &[&camera],
        )
        .await
        .unwrap();
    let first: Uuid =
        client.query_one("SELECT scenario_uuid FROM scenarios ORDER BY seq LIMIT 1", &[]).await.unwrap().get(0);
    let _reaper = RunnerReaper(HashSet::from([first]));
    let mut orchestrator = spawn_orchestrator(&app, 1);
    eventually(Duration::from_secs(60), "the first round to be writing", || async {
        (app.scalar("SELECT count(*) FROM workers").await > 0).then_some(())
    })
    .await;
    let (status, took) = fleet::terminate(&mut orchestrator).await;
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?} to exit");
    eprintln!("orchestrator exited {took:?} after SIGTERM with 60,000 queued");
}

/// A stored position beyond the end of the log (a broker that lost its data, retention): the
/// orchestrator's consumer starts again at the earliest record instead of asking forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_outside_the_log_restarts_at_the_earliest_record() {
    let mut app = TestApp::spawn().await;
    app.start_relay();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let camera = format!("rtsp://{}/cam", silent.local_addr().unwrap());
    let ids = [app.create_scenario(&camera).await, app.create_scenario(&camera).await];
    let _reaper = RunnerReaper(HashSet::from(ids));
    eventually(Duration::from_secs(30), "the events published", || async {
        (app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0).then_some(())
    })
    .await;
    let topic = app.settings.kafka.topic_init_scenario.clone();
    let client = app.pool.get().await.unwrap();
    for partition in 0..app.settings.kafka.partitions {
        client
            .execute(
                "INSERT INTO consumer_positions (consumer, topic, partition, next_offset) VALUES ('orchestrator', $1, $2, 1000000)",
                &[&topic, &partition],
            )
            .await
            .unwrap();
    }
    let mut orchestrator = spawn_orchestrator(&app, 2);
    eventually(Duration::from_secs(60), "every position back inside the log", || async {
        let beyond = app
            .scalar(&format!(
                "SELECT count(*) FROM consumer_positions WHERE consumer = 'orchestrator' AND topic = '{topic}' AND next_offset >= 1000000"
            ))
            .await;
        (beyond == 0).then_some(())
    })
    .await;
    let sum = format!(
        "SELECT COALESCE(sum(next_offset), 0)::bigint FROM consumer_positions WHERE consumer = 'orchestrator' AND topic = '{topic}'"
    );
    eventually(Duration::from_secs(30), "both init events read again, from the start", || async {
        (app.scalar(&sum).await == 2).then_some(())
    })
    .await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

/// A broker that wants a SCRAM login and speaks only TLS (as the Ansible roles deploy it):
/// the API's outbox, the relay, the orchestrator and its runners all log in, the runner gets
/// the password with its secrets (not in its environment), results are stored; a client
/// without the login, with a wrong password, or without TLS gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_a_login_and_tls_carries_the_whole_flow_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let certs = common::test_certificates(dir.path());
    let storage = common::unique("nisshi");
    common::cluster().create_database(&storage).await.unwrap();
    let pg = common::cluster().settings(&storage);
    let password = common::unique("pw");
    let broker = vap_dev::devstack::Broker::start_secured(
        &format!("postgres://{}@{}:{}/{}", pg.user, pg.host, pg.port, pg.dbname),
        vap_dev::devstack::BrokerSecurity {
            username: "vap".into(),
            password: password.clone(),
            tls: Some((certs.cert.clone(), certs.key.clone())),
        },
    )
    .unwrap();
    let (login, ca) = (password.clone(), certs.ca.clone());
    let mut app = TestApp::spawn_with_broker(broker, move |s| {
        s.api.allow_file_urls = true;
        s.kafka.sasl_mechanism = vap_core::config::SaslMechanism::ScramSha512;
        s.kafka.sasl_username = "vap".into();
        s.kafka.sasl_password = vap_core::config::Secret::new(login);
        s.kafka.tls_ca_file = Some(ca);
    })
    .await;
    app.start_relay();
    let mut orchestrator = spawn_orchestrator(&app, 2);
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let file = app.create_scenario(media().short.to_str().unwrap()).await;
    let live = app.create_scenario(&format!("rtsp://127.0.0.1:{port}/cam")).await;
    let _reaper = RunnerReaper(HashSet::from([file, live]));

    app.wait_for_status(file, "inactive", Duration::from_secs(90)).await;
    assert_eq!(app.prediction(file).await["total_frames_processed"], 10, "every frame of the file stored");
    app.wait_for_status(live, "active", Duration::from_secs(90)).await;
    let pid = runner_processes(&HashSet::from([live]))[&live][0];
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).into_owned();
    assert!(environ.contains("VAP_KAFKA__SASL_USERNAME=vap"), "the runner logs in as configured");
    assert!(!environ.contains(&password), "the broker password is in the runner's environment");
    eventually(Duration::from_secs(30), "the live camera's results", || async {
        (app.prediction(live).await["total_frames_processed"].as_i64() > Some(0)).then_some(())
    })
    .await;

    // Strangers: each gets no topic list within the time a client gets.
    let refused = |adjust: fn(&mut vap_core::config::KafkaSettings)| {
        let mut settings = app.settings.kafka.clone();
        adjust(&mut settings);
        async move {
            let attempt = async { vap_core::kafka::builder(&settings).unwrap().build().await?.list_topics().await };
            !matches!(tokio::time::timeout(Duration::from_secs(20), attempt).await, Ok(Ok(_)))
        }
    };
    assert!(!refused(|_| {}).await, "the configured login lists topics (else the rest proves nothing)");
    assert!(refused(|k| k.sasl_mechanism = vap_core::config::SaslMechanism::None).await, "no login was let in");
    assert!(refused(|k| k.sasl_password = vap_core::config::Secret::new("wrong")).await, "a wrong password was let in");
    assert!(refused(|k| k.tls_ca_file = None).await, "a plain connection was let in");

    app.shutdown_scenario(live).await;
    app.wait_for_status(live, "inactive", Duration::from_secs(30)).await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

/// A runner an earlier orchestrator started, adopted by the next one, finishes its file while
/// the inbox is down (its end not yet stored): the orchestrator cannot see how it ended, so it
/// waits for the inbox, and the file is not analysed a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_runner_that_finishes_before_its_end_is_stored_is_not_started_again() {
    let mut app = TestApp::spawn_with(|s| s.api.allow_file_urls = true).await;
    let inbox = app.start_relay();
    let mut first = spawn_orchestrator(&app, 2);
    // Every frame of 20 s: long enough to outlive the first orchestrator.
    let file = app.create_scenario_with(media().people.to_str().unwrap(), serde_json::json!({"fps": 10})).await;
    let set = HashSet::from([file]);
    let _reaper = RunnerReaper(set.clone());
    let pid =
        eventually(Duration::from_secs(60), "the runner", || async { runner_processes(&set).get(&file).map(|p| p[0]) })
            .await;
    vap_core::sys::signal(first.id(), vap_core::sys::SIGKILL);
    let _ = first.wait();
    inbox.cancel();
    let mut second = spawn_orchestrator(&app, 2);
    let adopted_from = Instant::now();

    // The runner ends by itself; no other takes its place, before or after the inbox is back.
    eventually(Duration::from_secs(120), "the adopted runner to finish", || async {
        runner_processes(&set).is_empty().then_some(())
    })
    .await;
    assert!(
        adopted_from.elapsed() > Duration::from_secs(2),
        "the runner ended {:?} after the second orchestrator started: too soon to say it was adopted",
        adopted_from.elapsed()
    );
    let watch = |until: Duration| {
        let set = set.clone();
        async move {
            let end = Instant::now() + until;
            while Instant::now() < end {
                let running = runner_processes(&set);
                assert!(running.get(&file).is_none_or(|p| p == &[pid]), "started again: {running:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    watch(Duration::from_secs(3)).await;
    app.start_relay();
    let done = async {
        app.wait_for_status(file, "inactive", Duration::from_secs(30)).await;
    };
    tokio::join!(done, watch(Duration::from_secs(8)));
    let p = app.prediction(file).await;
    // 20 s at 10 fps (sampled by media time, a frame or two may fall between ticks).
    let frames = p["total_frames_processed"].as_i64().unwrap();
    assert!((190..=200).contains(&frames), "{frames} frames stored");
    let _ = second.kill();
    let _ = second.wait();
}
