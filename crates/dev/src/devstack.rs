//! A throwaway PostgreSQL cluster and Kafka-protocol broker (nisshi), started by the project
//! itself: the tests and the embedded default (`vap-dev`) share this code, and nothing assumes
//! a service already running.
//!
//! Child processes are spawned from one long-lived thread with a parent-death signal, so they
//! die with the process that started them even if it is killed; an exit hook removes their
//! data directories.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vap_core::config::{DatabaseSettings, Secret};
use vap_core::sys;

#[derive(Debug, thiserror::Error)]
pub enum DevStackError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0} not found; {1}")]
    Missing(&'static str, &'static str),
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{0} did not become ready in time")]
    Timeout(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevStackError {
    let what = what.into();
    move |source| DevStackError::Io { what, source }
}

/// A loopback port that is free now, chosen below the kernel's ephemeral range (32768+): a
/// port picked by binding port 0 is handed out again as the source port of outgoing
/// connections (to PostgreSQL, the broker), and a server started on it moments later then
/// fails with "address in use" (seen in CI).
pub fn free_port() -> Result<u16, DevStackError> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Spread concurrent test binaries apart; step within a process.
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (BASE + seed.wrapping_add(n.wrapping_mul(97)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(DevStackError::Failed {
        what: "find a free port".into(),
        detail: format!("none free in {BASE}..{}", BASE + SPAN),
    })
}

fn wait_for_port(port: u16, what: &str, timeout: Duration) -> Result<(), DevStackError> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(DevStackError::Timeout(what.to_string()))
}

// ---- process keeping -------------------------------------------------------------------

type SpawnJob = (Command, libc::c_int, mpsc::Sender<std::io::Result<Child>>);

/// Spawns on a thread that lives as long as the process: PR_SET_PDEATHSIG fires when the
/// *thread* that forked the child exits, so a short-lived test thread must not do it.
fn spawn_kept(mut cmd: Command, death_signal: libc::c_int) -> std::io::Result<Child> {
    // A process group of its own: a Ctrl-C in the terminal reaches the services, which stop
    // first, and not the database and broker under them (the owner stops those last).
    cmd.process_group(0);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("vap-devstack-keeper".into())
            .spawn(move || {
                for (mut cmd, _signal, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The channel lives in a static, so this thread never ends.
            })
            .expect("spawn the devstack keeper thread");
        sys::at_exit(cleanup_at_exit);
        Mutex::new(tx)
    });
    sys::die_with_parent(&mut cmd, death_signal);
    let (tx, rx) = mpsc::channel();
    vap_core::sys::lock(keeper)
        .send((cmd, death_signal, tx))
        .map_err(|_| std::io::Error::other("devstack keeper thread is gone"))?;
    rx.recv().map_err(|_| std::io::Error::other("devstack keeper thread is gone"))?
}

/// (pid, signal, data dir) of everything still running, for the exit hook.
static LIVE: Mutex<Vec<(u32, libc::c_int, Option<PathBuf>)>> = Mutex::new(Vec::new());

extern "C" fn cleanup_at_exit() {
    let live = std::mem::take(&mut *vap_core::sys::lock(&LIVE));
    for (pid, sig, _) in &live {
        sys::signal(*pid, *sig);
    }
    for (pid, _, dir) in &live {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !sys::is_gone(*pid) {
            sys::reap_if_exited(*pid);
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn track(pid: u32, sig: libc::c_int, dir: Option<PathBuf>) {
    vap_core::sys::lock(&LIVE).push((pid, sig, dir));
}

fn untrack(pid: u32) {
    vap_core::sys::lock(&LIVE).retain(|(p, _, _)| *p != pid);
}

fn scratch_dir(prefix: &str) -> Result<PathBuf, DevStackError> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(remove_dirs_of_dead_processes);
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vap-{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    Ok(dir)
}

/// A process killed with SIGKILL (a test, a benchmark) can't clean up after itself: remove
/// scratch dirs whose owner process is gone, so they never pile up in /tmp.
fn remove_dirs_of_dead_processes() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("vap-")) else { continue };
        // vap-<prefix>-<pid>-<n>
        let mut parts = rest.rsplitn(3, '-');
        let (Some(_n), Some(pid), Some(_prefix)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if sys::is_gone(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

// ---- PostgreSQL ------------------------------------------------------------------------

/// Where PostgreSQL's server binaries are: `VAP_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout).
pub fn postgres_bin_dir() -> Result<PathBuf, DevStackError> {
    if let Ok(dir) = std::env::var("VAP_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or(DevStackError::Missing(
        "PostgreSQL server binaries",
        "install postgresql-15 (scripts/setup does) or set VAP_PG_BIN",
    ))
}

/// The uid/gid to run postgres as: it refuses root, so root uses the `postgres` account.
fn postgres_account() -> Option<(u32, u32)> {
    if !sys::is_root() {
        return None;
    }
    sys::account_ids("postgres")
}

pub struct PostgresOptions {
    /// fsync and synchronous commit off: fine for tests, not for benchmarks of durability.
    pub durable: bool,
    pub port: Option<u16>,
    pub max_connections: u32,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self { durable: false, port: None, max_connections: 400 }
    }
}

pub struct PostgresCluster {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    pub user: String,
    opts: PostgresOptions,
}

impl PostgresCluster {
    pub fn start(opts: PostgresOptions) -> Result<Self, DevStackError> {
        let bin = postgres_bin_dir()?;
        let dir = scratch_dir("pg")?;
        let data = dir.join("data");
        let account = postgres_account();
        let as_account = |cmd: &mut Command| {
            if let Some((uid, gid)) = account {
                cmd.uid(uid).gid(gid);
            }
        };
        if let Some((uid, gid)) = account {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(io("chown the cluster dir"))?;
        }
        let user = "vap".to_string();
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", &user, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_account(&mut initdb);
        let out = initdb.output().map_err(io("run initdb"))?;
        if !out.status.success() {
            return Err(DevStackError::Failed {
                what: "initdb".into(),
                detail: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut cluster = Self { dir, port, child: None, user, opts };
        cluster.launch(&bin)?;
        Ok(cluster)
    }

    /// Starts the server on the cluster's data directory and waits until it answers.
    fn launch(&mut self, bin: &Path) -> Result<(), DevStackError> {
        let account = postgres_account();
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D").arg(self.dir.join("data"));
        cmd.args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"]).arg(&self.dir);
        let mut set = |k: &str, v: &str| {
            cmd.args(["-c", &format!("{k}={v}")]);
        };
        set("max_connections", &self.opts.max_connections.to_string());
        set("shared_buffers", "128MB");
        if !self.opts.durable {
            set("fsync", "off");
            set("synchronous_commit", "off");
            set("full_page_writes", "off");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .map_err(io("open postgres.log"))?;
        if let Some((uid, gid)) = account {
            let _ = std::os::unix::fs::chown(self.dir.join("postgres.log"), Some(uid), Some(gid));
            cmd.uid(uid).gid(gid);
        }
        cmd.stdout(Stdio::null()).stderr(log);
        // SIGQUIT is PostgreSQL's immediate shutdown.
        let child = spawn_kept(cmd, libc::SIGQUIT).map_err(io("start postgres"))?;
        track(child.id(), libc::SIGQUIT, Some(self.dir.clone()));
        self.child = Some(child);
        self.wait_ready(bin)
    }

    /// Stops the server (fast shutdown: sessions are ended, as in a restart for an upgrade) and
    /// starts it again on the same data and port.
    pub fn restart(&mut self) -> Result<(), DevStackError> {
        self.stop();
        self.resume()
    }

    /// Stops the server (fast shutdown), keeping its data and port for [`Self::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            untrack(child.id());
            sys::signal(child.id(), libc::SIGINT);
            let _ = child.wait();
        }
    }

    pub fn resume(&mut self) -> Result<(), DevStackError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.launch(&postgres_bin_dir()?)
    }

    fn wait_ready(&self, bin: &Path) -> Result<(), DevStackError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        Err(DevStackError::Failed { what: "postgres start".into(), detail: log })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Settings for database `dbname` on this cluster.
    pub fn settings(&self, dbname: &str) -> DatabaseSettings {
        DatabaseSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            user: self.user.clone(),
            password: Secret::default(),
            dbname: dbname.into(),
            ..DatabaseSettings::default()
        }
    }

    /// Creates an empty database (the zero-to-production pattern: one per test).
    pub async fn create_database(&self, name: &str) -> Result<(), DevStackError> {
        let settings = self.settings("postgres");
        let (client, conn) = vap_core::db::pg_config(&settings)
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| DevStackError::Failed { what: "connect to postgres".into(), detail: e.to_string() })?;
        let conn = tokio::spawn(conn);
        let quoted = name.replace('"', "\"\"");
        let result = client.batch_execute(&format!("CREATE DATABASE \"{quoted}\"")).await;
        drop(client);
        let _ = conn.await;
        result.map_err(|e| DevStackError::Failed { what: format!("create database {name}"), detail: e.to_string() })
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            untrack(child.id());
            sys::signal(child.id(), sys::SIGQUIT);
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- broker ----------------------------------------------------------------------------

/// The nisshi binary: `VAP_NISSHI_BIN`, else `~/.cargo/bin/nisshi`, else `nisshi` on PATH.
pub fn nisshi_bin() -> Result<PathBuf, DevStackError> {
    if let Ok(p) = std::env::var("VAP_NISSHI_BIN") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Ok(cargo) = home {
        let p = cargo.join("bin/nisshi");
        if p.exists() {
            return Ok(p);
        }
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("nisshi")).find(|p| p.exists()))
        .ok_or(DevStackError::Missing("the nisshi broker", "run scripts/setup, or set VAP_NISSHI_BIN"))
}

#[derive(Debug, Clone)]
pub enum BrokerStorage {
    Memory,
    /// A PostgreSQL URL: the broker keeps its log there, so it survives broker restarts.
    Postgres(String),
}

pub struct Broker {
    port: u16,
    /// The port clients are told to use (metadata), when something sits in front of the broker.
    advertised: Option<u16>,
    storage: BrokerStorage,
    security: Option<BrokerSecurity>,
    dir: PathBuf,
    child: Option<Child>,
}

/// A broker that wants a SCRAM-SHA-512 login and, with `tls`, speaks only TLS.
#[derive(Debug, Clone)]
pub struct BrokerSecurity {
    pub username: String,
    pub password: String,
    /// Certificate chain and private key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Broker {
    pub fn start(storage: BrokerStorage) -> Result<Self, DevStackError> {
        Self::start_advertising(storage, None)
    }

    /// A broker that tells clients to connect to `advertised` (a proxy on loopback, say).
    pub fn start_advertising(storage: BrokerStorage, advertised: Option<u16>) -> Result<Self, DevStackError> {
        let mut broker =
            Self { port: free_port()?, advertised, storage, security: None, dir: scratch_dir("broker")?, child: None };
        broker.resume()?;
        Ok(broker)
    }

    /// A broker with a login (kept in PostgreSQL storage, which nisshi needs for it). nisshi
    /// creates users only over an unauthenticated connection: the broker first runs open on
    /// loopback, gets its user, then restarts secured.
    pub fn start_secured(postgres_url: &str, security: BrokerSecurity) -> Result<Self, DevStackError> {
        let mut broker = Self::start(BrokerStorage::Postgres(postgres_url.into()))?;
        let out = Command::new(nisshi_bin()?)
            .args(["user", "create", "--broker", &format!("tcp://{}", broker.addr()), "--mechanism", "scram512"])
            .args([&security.username, &security.password])
            .current_dir(&broker.dir)
            .output()
            .map_err(io("nisshi user create"))?;
        if !out.status.success() {
            let detail = String::from_utf8_lossy(&out.stderr).into_owned();
            return Err(DevStackError::Failed { what: "nisshi user create".into(), detail });
        }
        broker.stop();
        broker.security = Some(security);
        broker.resume()?;
        Ok(broker)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the broker (SIGKILL: a crash, not a clean stop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            untrack(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn resume(&mut self) -> Result<(), DevStackError> {
        if self.child.is_some() {
            return Ok(());
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let storage = match &self.storage {
            BrokerStorage::Memory => "memory://nisshi/".to_string(),
            BrokerStorage::Postgres(u) => u.clone(),
        };
        let mut cmd = Command::new(nisshi_bin()?);
        cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised]).args([
            "--storage-engine",
            &storage,
            "--cluster-id",
            "vap",
        ]);
        if let Some(security) = &self.security {
            cmd.arg("--authentication");
            if let Some((cert, key)) = &security.tls {
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            }
        }
        cmd
            // nisshi reads `.env` from its working directory: give it an empty one.
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("broker.log")).map_err(io("create broker.log"))?);
        let child = spawn_kept(cmd, libc::SIGKILL).map_err(io("start nisshi"))?;
        track(child.id(), libc::SIGKILL, None);
        self.child = Some(child);
        wait_for_port(self.port, "nisshi broker", Duration::from_secs(20)).map_err(|e| {
            let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
            DevStackError::Failed { what: e.to_string(), detail: log }
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
