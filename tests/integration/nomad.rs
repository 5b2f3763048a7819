//! The Nomad backend against a faithful double of Nomad's HTTP API (no Nomad binary can be had
//! here: ../shared/reference/nomad-http-api.md), which really runs each allocation's runner.
//! First the client against the API's conventions, then the whole flow through it.

use crate::common;
use crate::fleet;
use crate::media;
use crate::nomad_double;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{eventually, TestApp};
use fleet::{orchestrator_config, runner_env, spawn_orchestrator_with_config};
use hyper::StatusCode;
use media::{free_port, media, RtspServer};
use nomad_double::NomadDouble;
use serde_json::{json, Value};
use uuid::Uuid;
use vap_core::camera_url::CameraUrl;
use vap_core::config::{NomadBackendSettings, Secret};
use vap_core::job::RunnerJob;
use vap_orchestrator::nomad::{job_spec, NomadClient, NomadError};

fn client_settings(double: &NomadDouble, token: &str) -> NomadBackendSettings {
    NomadBackendSettings {
        address: double.address(),
        token: Secret::new(token),
        request_timeout_ms: 2_000,
        ..NomadBackendSettings::default()
    }
}

fn status_of(e: NomadError) -> (StatusCode, String) {
    match e {
        NomadError::Status { status, body, .. } => (status, body),
        other => panic!("expected an HTTP status error, got {other}"),
    }
}

/// A job that runs `sleep` on the double, in the shape vap submits.
fn sleeper(id: &str) -> Value {
    json!({ "ID": id, "Type": "service", "TaskGroups": [{ "Name": "runner", "Count": 1,
        "RestartPolicy": { "Attempts": 0, "Interval": 60_000_000_000u64, "Delay": 1_000_000_000u64, "Mode": "fail" },
        "Tasks": [{ "Name": "runner", "Driver": "raw_exec", "Config": { "command": "sleep", "args": ["30"] }, "KillTimeout": 1_000_000_000u64 }] }] })
}

#[tokio::test]
async fn client_speaks_nomads_api_acl_errors_and_blocking_queries() {
    let double = NomadDouble::start(Some("s3cret")).await;
    let client = NomadClient::new(&client_settings(&double, "s3cret")).unwrap();

    // ACLs: no token, a wrong token.
    let anonymous = NomadClient::new(&client_settings(&double, "")).unwrap();
    assert_eq!(
        status_of(anonymous.list_jobs("vap-runner-").await.unwrap_err()),
        (StatusCode::FORBIDDEN, "Permission denied".into())
    );
    let wrong = NomadClient::new(&client_settings(&double, "nope")).unwrap();
    assert_eq!(
        status_of(wrong.list_jobs("vap-runner-").await.unwrap_err()),
        (StatusCode::FORBIDDEN, "ACL token not found".into())
    );

    // Register; re-registering the same spec is idempotent (no second allocation).
    let index = client.register_job(&sleeper("vap-runner-a")).await.unwrap();
    assert!(index > 0);
    client.register_job(&sleeper("vap-runner-a")).await.unwrap();
    let (allocs, alloc_index) = eventually(Duration::from_secs(10), "the allocation to run", || async {
        let (allocs, index) = client.job_allocations("vap-runner-a", None).await.unwrap();
        (allocs.len() == 1 && allocs[0].client_status == "running").then_some((allocs, index))
    })
    .await;
    assert_eq!(allocs[0].task_states["runner"].state, "running");
    assert!(!allocs[0].node_name.is_empty());
    let jobs = client.list_jobs("vap-runner-").await.unwrap();
    assert_eq!((jobs.len(), jobs[0].status.as_str()), (1, "running"));

    // Nomad's quirks: an unknown job's allocations are 200 [], deleting it is 200.
    assert!(client.job_allocations("vap-runner-unknown", None).await.unwrap().0.is_empty());
    client.deregister_job("vap-runner-unknown", true).await.unwrap();
    // Validation errors are plain text with Nomad's codes.
    let (status, body) = status_of(client.register_job(&json!({ "ID": "x", "TaskGroups": [] })).await.unwrap_err());
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("Missing job task groups"), "{body}");
    let (status, body) = status_of(client.register_job(&json!({ "Name": "x" })).await.unwrap_err());
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, "Job ID hasn't been provided"));

    // A blocking query holds until the index moves past ours, then answers with the change.
    let started = Instant::now();
    let timed_out =
        client.job_allocations("vap-runner-a", Some((alloc_index + 1_000, Duration::from_millis(300)))).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(280), "returned before the wait: {:?}", started.elapsed());
    assert_eq!(timed_out.0.len(), 1, "a timeout answers with the unchanged data");
    let (_, current) = client.job_allocations("vap-runner-a", None).await.unwrap();
    let settings = client_settings(&double, "s3cret");
    let watch = tokio::spawn(async move {
        let c = NomadClient::new(&settings).unwrap();
        let started = Instant::now();
        let (allocs, index) =
            c.job_allocations("vap-runner-a", Some((current, Duration::from_secs(20)))).await.unwrap();
        (allocs, index, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.deregister_job("vap-runner-a", true).await.unwrap();
    let (allocs, index, waited) = watch.await.unwrap();
    assert!(
        index > current && waited < Duration::from_secs(5),
        "woken by the change: index {index}, waited {waited:?}"
    );
    assert_eq!(allocs[0].desired_status, "stop");
    // Purged: gone from the list, and its task is stopped.
    assert!(client.list_jobs("vap-runner-").await.unwrap().is_empty());
    eventually(Duration::from_secs(10), "the task to be killed", || async {
        double.running_tasks().is_empty().then_some(())
    })
    .await;
}

/// vap-orchestrator with `backend = "nomad"` against the double; `extra_env` is added to the
/// runner's environment.
fn spawn_nomad_orchestrator(
    app: &TestApp,
    double: &NomadDouble,
    dir: &Path,
    extra_env: &[String],
) -> std::process::Child {
    spawn_orchestrator_with_config(app, &nomad_orchestrator_config(app, double, dir, extra_env))
}

fn nomad_orchestrator_config(
    app: &TestApp,
    double: &NomadDouble,
    dir: &Path,
    extra_env: &[String],
) -> std::path::PathBuf {
    let mut env = runner_env(app);
    env.extend(extra_env.iter().cloned());
    let section = format!(
        "address = \"{}\"\ntoken = \"s3cret\"\ncommand = \"{}\"\nrunner_env = {}\nrestart_attempts = 1\nrestart_delay_secs = 1\nreschedule_attempts = 1\nkill_timeout_secs = 5\nblocking_wait_ms = 5000\n",
        double.address(),
        env!("CARGO_BIN_EXE_vap-runner"),
        serde_json::to_string(&env).unwrap(),
    );
    orchestrator_config(dir, "nomad", 10, &section)
}

/// A partitioned client keeps its allocation running after Nomad has lost it: vap places the
/// camera again as a new placement (a new job version, on the other client), and the inbox
/// refuses what the old allocation still sends. Back, the old allocation is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_clients_allocation_keeps_running_and_its_records_are_refused() {
    let app = TestApp::spawn_for_runners().await;
    let double = NomadDouble::start(Some("s3cret")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = nomad_orchestrator_config(&app, &double, dir.path(), &[]);
    // Lost 3 s after its client stops heartbeating (the job's Disconnect.LostAfter).
    let mut orchestrator = fleet::spawn_orchestrator_with_env(
        &app,
        &config,
        &[("VAP_ORCHESTRATOR__HOST_DOWN_AFTER_SECS".into(), "3".into())],
    );
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let id = app
        .create_scenario_with(
            &format!("rtsp://127.0.0.1:{port}/cam"),
            json!({ "model": "ssdlite_person_300", "fps": 2 }),
        )
        .await;
    app.wait_for_status(id, "active", Duration::from_secs(90)).await;
    let job_id = format!("vap-runner-{id}");
    let first = eventually(Duration::from_secs(30), "placement 1 running with results", || async {
        let s = app.scenario(id).await;
        (s["worker"]["status"] == "running" && s["worker"]["epoch"] == 1 && s["frames_processed"].as_i64() > Some(0))
            .then_some(s)
    })
    .await;
    let old_node = first["worker"]["node"].as_str().unwrap().to_string();
    let old_pid = double.running_tasks()[&job_id][0];

    double.partition(&old_node);
    let moved = eventually(Duration::from_secs(60), "the camera placed again on the other client", || async {
        let s = app.scenario(id).await;
        let w = &s["worker"];
        (w["epoch"] == 2 && w["node"].as_str() != Some(old_node.as_str()) && w["status"] == "running").then_some(s)
    })
    .await;
    assert_eq!(moved["worker"]["moved"]["previous_node"], old_node.as_str(), "{moved}");
    assert!(moved["worker"]["moved"]["reason"].as_str().unwrap().contains(&old_node), "{moved}");
    // The old allocation still runs beside its replacement, and what it sends is refused
    // while the new one's results are stored.
    // (Nomad's own replacement, of the old version, is stopped by the new one.)
    eventually(Duration::from_secs(20), "the old allocation running beside the new one", || async {
        let tasks = double.running_tasks()[&job_id].clone();
        (tasks.len() == 2 && tasks.contains(&old_pid)).then_some(())
    })
    .await;
    eventually(Duration::from_secs(60), "stale records refused and new results stored", || async {
        let s = app.scenario(id).await;
        (app.superseded_records(id).await > 0 && s["worker"]["moved"]["recovered_at"].is_string()).then_some(())
    })
    .await;
    let events = app.get(&format!("/api/v1/scenario/{id}/events?kind=camera_moved")).await.json();
    assert_eq!(events["events"].as_array().map(Vec::len), Some(1), "{events}");

    // The client is back: the old allocation is stopped there.
    double.heal(&old_node);
    eventually(Duration::from_secs(20), "the stale allocation stopped", || async {
        let tasks = double.running_tasks().get(&job_id).cloned().unwrap_or_default();
        (tasks.len() == 1 && !tasks.contains(&old_pid)).then_some(())
    })
    .await;
    app.shutdown_scenario(id).await;
    app.wait_for_status(id, "inactive", Duration::from_secs(60)).await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nomad_backend_end_to_end_through_the_double() {
    let app = TestApp::spawn_for_runners().await;
    let double = NomadDouble::start(Some("s3cret")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut orchestrator = spawn_nomad_orchestrator(&app, &double, dir.path(), &[]);
    let client = NomadClient::new(&client_settings(&double, "s3cret")).unwrap();

    // A live camera: one job `vap-runner-<uuid>`, running, detections served.
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let live = app.create_scenario(&format!("rtsp://127.0.0.1:{port}/cam")).await;
    let active = app.wait_for_status(live, "active", Duration::from_secs(90)).await;
    let job_id = format!("vap-runner-{live}");
    let w = eventually(Duration::from_secs(10), "the worker row to be complete", || async {
        let s = app.scenario(live).await;
        (s["worker"]["status"] == "running" && s["worker"]["node"].is_string()).then_some(s["worker"].clone())
    })
    .await;
    assert_eq!((w["backend"].as_str(), w["backend_ref"].as_str()), (Some("nomad"), Some(job_id.as_str())), "{active}");
    assert!(w["node"].as_str().unwrap().starts_with("client-"), "{w}");
    let jobs = client.list_jobs("vap-runner-").await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), vec![job_id.as_str()]);
    assert_eq!(double.running_tasks().get(&job_id).map(Vec::len), Some(1));
    let frames =
        app.get(&format!("/api/v1/prediction/{live}")).await.json()["total_frames_processed"].as_i64().unwrap();
    assert!(frames >= 1);

    // Shutdown: the job is purged and its task stopped; the scenario ends inactive.
    app.shutdown_scenario(live).await;
    app.wait_for_status(live, "inactive", Duration::from_secs(90)).await;
    eventually(Duration::from_secs(15), "the job gone and its task stopped", || async {
        (client.list_jobs("vap-runner-").await.unwrap().is_empty() && double.running_tasks().is_empty()).then_some(())
    })
    .await;

    // A file: analysed to its end, inactive, the job removed (Nomad would restart a service
    // task that exits, so the orchestrator must take the job away).
    let file = app.create_scenario(media().short.to_str().unwrap()).await;
    app.wait_for_status(file, "inactive", Duration::from_secs(90)).await;
    assert_eq!(app.get(&format!("/api/v1/prediction/{file}")).await.json()["total_frames_processed"], 10);
    eventually(Duration::from_secs(15), "the finished file's job removed", || async {
        client.list_jobs("vap-runner-").await.unwrap().is_empty().then_some(())
    })
    .await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nomad_giving_up_fails_the_scenario_with_the_reason() {
    let app = TestApp::spawn_for_runners().await;
    let double = NomadDouble::start(Some("s3cret")).await;
    let dir = tempfile::tempdir().unwrap();
    // A runner that can never start: its model is missing (exit 4, every time).
    let mut orchestrator =
        spawn_nomad_orchestrator(&app, &double, dir.path(), &["VAP_RUNNER__MODELS_DIR=/nonexistent/models".into()]);
    let id = app.create_scenario(media().short.to_str().unwrap()).await;
    let failed = app.wait_for_status(id, "failed", Duration::from_secs(90)).await;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("nomad"), "the reason names the backend's verdict: {failed}");
    assert_eq!(failed["worker"]["status"], "failed", "{failed}");
    // One restart in place, then one reschedule to a new allocation, then Nomad gives up.
    assert_eq!(double.placements(), 2, "rescheduled once before giving up");
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[test]
fn submitted_job_carries_the_scenario_the_runner_and_no_secret_in_its_arguments() {
    let spec = RunnerJob {
        scenario: Uuid::new_v4(),
        camera_url: CameraUrl::trusted("rtsp://u:secret@cam/1".into()),
        epoch: chrono::Utc::now(),
        options: Default::default(),
        options_revision: 0,
        placement: vap_core::signing::PlacementEpoch(1),
        moved: None,
        results_key: vap_core::signing::ResultsKey::new(vec![3; 32]),
        kafka_password: Some(vap_core::config::Secret::new("broker-login-secret")),
    };
    let job = job_spec(&NomadBackendSettings::default(), &spec, std::time::Duration::from_secs(30));
    let task = &job["TaskGroups"][0]["Tasks"][0];
    assert_eq!(job["ID"], format!("vap-runner-{}", spec.scenario));
    assert_eq!(job["Type"], "service");
    // No secret anywhere in the job (Nomad shows jobs to anyone who may read them): the URL and
    // the results key are a Variable, rendered to a file in the task's secrets dir.
    let text = job.to_string();
    assert!(!text.contains("secret@") && !text.contains(&"03".repeat(32)), "{text}");
    assert_eq!(task["Env"]["VAP_JOB_SECRETS"], "file:${NOMAD_SECRETS_DIR}/vap-job.json");
    assert_eq!(task["Templates"][0]["DestPath"], "secrets/vap-job.json");
    assert_eq!(task["Templates"][0]["Perms"], "0400");
}
