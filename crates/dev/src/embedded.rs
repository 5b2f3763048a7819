//! The embedded default (`vap-dev`): a private PostgreSQL cluster and broker, with the real
//! `vap-relay`, `vap-api` and `vap-orchestrator` binaries run as child processes against them;
//! the orchestrator places `vap-runner`s as local processes. No Docker, no system services;
//! everything stops with Ctrl-C.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::devstack::{Broker, BrokerStorage, DevStackError, PostgresCluster, PostgresOptions};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(transparent)]
    DevStack(#[from] DevStackError),
    #[error(transparent)]
    Db(#[from] vap_core::db::DbError),
    #[error(transparent)]
    Kafka(#[from] vap_core::kafka::KafkaError),
    #[error("cannot start {name}: {source}")]
    Spawn { name: &'static str, source: std::io::Error },
    #[error("{0} exited unexpectedly ({1})")]
    ChildDied(&'static str, std::process::ExitStatus),
}

/// Pedestrians on a street (Debian's opencv-doc): the demo scenario.
pub const SAMPLE_VIDEO: &str = "/usr/share/doc/opencv-doc/examples/data/vtest.avi";

pub struct EmbeddedOptions {
    /// API port; `None` picks 8080 when free, else any free port.
    pub api_port: Option<u16>,
    /// Where the vap binaries are (normally the directory of the running `vap-dev`).
    pub bin_dir: PathBuf,
    /// The model catalogue (the API checks options against it, runners load from it).
    pub models_dir: PathBuf,
    /// A video to start a scenario on once everything runs (a demo), if any.
    pub sample_video: Option<PathBuf>,
    pub max_workers: usize,
}

struct Service {
    name: &'static str,
    child: Child,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub async fn run(opts: EmbeddedOptions, shutdown: CancellationToken) -> Result<(), EmbeddedError> {
    // Both start by waiting on processes: not on the runtime's threads.
    let pg =
        blocking(|| PostgresCluster::start(PostgresOptions { durable: true, ..PostgresOptions::default() })).await?;
    pg.create_database("vap").await?;
    let database = pg.settings("vap");
    vap_core::db::migrate::run_with(&database).await?;
    let broker = blocking(|| Broker::start(BrokerStorage::Memory)).await?;
    // Made here, before the services start: two of them creating a topic at once is harmless,
    // but the loser's Kafka client logs it as an error, which looks like a failure.
    let kafka = vap_core::config::KafkaSettings { brokers: vec![broker.addr()], ..Default::default() };
    vap_core::kafka::KafkaLink::new(kafka).get().await?;
    let api_port = match opts.api_port {
        Some(p) => p,
        None if port_free(8080) => 8080,
        None => crate::devstack::free_port()?,
    };
    let env = service_env(&opts, &database, &broker, api_port)?;
    let mut services = Vec::new();
    for name in ["vap-relay", "vap-api", "vap-orchestrator"] {
        let child = Command::new(opts.bin_dir.join(name))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| EmbeddedError::Spawn { name, source })?;
        services.push(Service { name, child });
    }
    wait_healthy(&format!("127.0.0.1:{api_port}")).await;
    welcome(&opts, &format!("http://127.0.0.1:{api_port}"), &pg, &broker).await;
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(dead) = services.iter_mut().find_map(|s| s.child.try_wait().ok().flatten().map(|st| (s.name, st))) {
                    break Err(EmbeddedError::ChildDied(dead.0, dead.1));
                }
            }
        }
    };
    // Waiting for processes blocks: not on the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || {
        for s in &services {
            vap_core::sys::signal(s.child.id(), vap_core::sys::SIGTERM);
        }
        for s in &mut services {
            let _ = s.child.wait();
        }
        drop(broker);
        drop(pg);
    })
    .await;
    outcome
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DevStackError> + Send + 'static,
) -> Result<T, EmbeddedError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EmbeddedError::DevStack(DevStackError::Failed { what: "start".into(), detail: e.to_string() }))?
        .map_err(EmbeddedError::from)
}

fn service_env(
    opts: &EmbeddedOptions,
    database: &vap_core::config::DatabaseSettings,
    broker: &Broker,
    api_port: u16,
) -> Result<Vec<(&'static str, String)>, EmbeddedError> {
    Ok(vec![
        ("VAP_DATABASE__HOST", database.host.clone()),
        ("VAP_DATABASE__PORT", database.port.to_string()),
        ("VAP_DATABASE__USER", database.user.clone()),
        ("VAP_DATABASE__DBNAME", database.dbname.clone()),
        ("VAP_KAFKA__BROKERS", broker.addr()),
        ("VAP_API__LISTEN", format!("127.0.0.1:{api_port}")),
        ("VAP_API__ALLOW_FILE_URLS", "true".into()),
        // A trial on one machine: a camera served on this machine (mediamtx, ffmpeg) is allowed.
        ("VAP_DESTINATIONS__ALLOW", "127.0.0.0/8,::1".into()),
        ("VAP_RELAY__METRICS_LISTEN", format!("127.0.0.1:{}", crate::devstack::free_port()?)),
        ("VAP_ORCHESTRATOR__BACKEND", "local".into()),
        ("VAP_ORCHESTRATOR__MAX_WORKERS", opts.max_workers.to_string()),
        ("VAP_ORCHESTRATOR__METRICS_LISTEN", format!("127.0.0.1:{}", crate::devstack::free_port()?)),
        ("VAP_ORCHESTRATOR__LOCAL__RUNNER_BIN", opts.bin_dir.join("vap-runner").display().to_string()),
        ("VAP_ORCHESTRATOR__LOCAL__STOP_RUNNERS_ON_EXIT", "true".into()),
        ("VAP_RUNNER__MODELS_DIR", opts.models_dir.display().to_string()),
    ])
}

/// What a newcomer sees: where things are, and the sample scenario when there is one.
async fn welcome(opts: &EmbeddedOptions, base: &str, pg: &PostgresCluster, broker: &Broker) {
    println!();
    println!("vap is running (embedded: PostgreSQL on {}, broker on {})", pg.port(), broker.addr());
    println!("  API:     {base}");
    println!("  docs:    {base}/docs");
    println!("  try:     curl -s -XPOST {base}/api/v1/scenario/init -H 'content-type: application/json' -d '{{\"camera_url\": \"rtsp://camera.local/stream\"}}'");
    if let Some(video) = &opts.sample_video {
        match start_sample(base, video).await {
            Ok(id) => {
                println!("  sample:  scenario {id} on {}", video.display());
                println!("           curl -s {base}/api/v1/prediction/{id}        (detections, as they are stored)");
                println!("           curl -sN {base}/api/v1/prediction/{id}/stream   (live, Server-Sent Events)");
            }
            Err(e) => println!("  sample:  not started: {e}"),
        }
    }
    println!("Ctrl-C stops everything.");
}

/// POSTs a scenario on `video` through the API, as a user would.
async fn start_sample(base: &str, video: &std::path::Path) -> Result<String, String> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let body = serde_json::json!({ "camera_url": video.display().to_string() }).to_string();
    let req = hyper::Request::post(format!("{base}/api/v1/scenario/init"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    answer["scenario_uuid"].as_str().map(str::to_string).ok_or_else(|| answer.to_string())
}

async fn wait_healthy(addr: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
