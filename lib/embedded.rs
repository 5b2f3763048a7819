//! The embedded default (`vap-dev`): a private PostgreSQL cluster and broker, with the real
//! `vap-relay` and `vap-api` binaries run as child processes against them. No Docker, no
//! system services; everything stops with Ctrl-C.

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
    Db(#[from] crate::db::DbError),
    #[error("cannot start {name}: {source}")]
    Spawn { name: &'static str, source: std::io::Error },
    #[error("{0} exited unexpectedly ({1})")]
    ChildDied(&'static str, std::process::ExitStatus),
}

pub struct EmbeddedOptions {
    /// API port; `None` picks 8080 when free, else any free port.
    pub api_port: Option<u16>,
    /// Where the vap binaries are (normally the directory of the running `vap-dev`).
    pub bin_dir: PathBuf,
}

struct Service {
    name: &'static str,
    child: Child,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub async fn run(opts: EmbeddedOptions, shutdown: CancellationToken) -> Result<(), EmbeddedError> {
    let pg = PostgresCluster::start(PostgresOptions { durable: true, ..PostgresOptions::default() })?;
    pg.create_database("vap").await?;
    let database = pg.settings("vap");
    crate::db::migrate::run_with(&database).await?;
    let broker = Broker::start(BrokerStorage::Memory)?;
    let api_port = match opts.api_port {
        Some(p) => p,
        None if port_free(8080) => 8080,
        None => crate::devstack::free_port()?,
    };
    let env = [
        ("VAP_DATABASE__HOST", database.host.clone()),
        ("VAP_DATABASE__PORT", database.port.to_string()),
        ("VAP_DATABASE__USER", database.user.clone()),
        ("VAP_DATABASE__DBNAME", database.dbname.clone()),
        ("VAP_KAFKA__BROKERS", broker.addr()),
        ("VAP_API__LISTEN", format!("127.0.0.1:{api_port}")),
        ("VAP_API__ALLOW_FILE_URLS", "true".into()),
        ("VAP_RELAY__METRICS_LISTEN", format!("127.0.0.1:{}", crate::devstack::free_port()?)),
    ];
    let mut services = Vec::new();
    for name in ["vap-relay", "vap-api"] {
        let child = Command::new(opts.bin_dir.join(name))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| EmbeddedError::Spawn { name, source })?;
        services.push(Service { name, child });
    }
    let base = format!("http://127.0.0.1:{api_port}");
    wait_healthy(&format!("127.0.0.1:{api_port}")).await;
    println!();
    println!("vap is running (embedded: PostgreSQL on {}, broker on {})", pg.port(), broker.addr());
    println!("  API:     {base}");
    println!("  docs:    {base}/docs");
    println!("  try:     curl -s -XPOST {base}/api/v1/scenario/init -H 'content-type: application/json' -d '{{\"camera_url\": \"rtsp://camera.local/stream\"}}'");
    println!("Ctrl-C stops everything.");

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
    for s in &services {
        unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    for s in &mut services {
        let _ = s.child.wait();
    }
    drop(broker);
    drop(pg);
    outcome
}

async fn wait_healthy(addr: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
