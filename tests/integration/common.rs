//! Test harness: one throwaway PostgreSQL cluster per test binary, and per test a fresh
//! database, its own broker and uniquely named topics (zero-to-production style).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::Pool;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use vap_core::config::Settings;
use vap_dev::devstack::{Broker, BrokerStorage, PostgresCluster, PostgresOptions};

pub fn cluster() -> &'static PostgresCluster {
    static CLUSTER: OnceLock<PostgresCluster> = OnceLock::new();
    // Benchmarks set VAP_TEST_PG_DURABLE=1: fsync on, as in production.
    let durable = std::env::var("VAP_TEST_PG_DURABLE").is_ok_and(|v| v == "1");
    CLUSTER.get_or_init(|| {
        PostgresCluster::start(PostgresOptions { durable, ..PostgresOptions::default() }).expect("start postgres")
    })
}

/// The API's model catalogue and option defaults; the shipped models are checked once per run.
pub fn option_defaults(settings: &Settings) -> vap_core::options::Defaults {
    static CHECKED: OnceLock<vap_core::options::Defaults> = OnceLock::new();
    let shipped = CHECKED.get_or_init(|| Settings::default().runner.option_defaults().unwrap());
    vap_core::options::Defaults {
        fps: settings.runner.sample_fps,
        min_confidence: settings.runner.score_threshold,
        ..shipped.clone()
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The REST API as a user reaches it over HTTP: a TestApp's, or a deployed host's.
pub struct ApiClient {
    pub base: String,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    token: Option<String>,
}

pub struct TestApp {
    pub settings: Settings,
    pub api: ApiClient,
    pub pool: Pool,
    pub broker: Broker,
    pub shutdown: CancellationToken,
    api_done: Option<tokio::task::JoinHandle<Result<(), vap_core::tasks::TaskFailed>>>,
    relays: Vec<CancellationToken>,
    _analysis_turn: Option<tokio::sync::SemaphorePermit<'static>>,
}

/// Tests that analyse video take turns: on 2 cores two of them (or one beside a browser) slow
/// each other's runners until live frames are skipped and waits run out. The other test
/// thread still runs the rest of the suite.
static ANALYSIS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub async fn analysis_turn() -> tokio::sync::SemaphorePermit<'static> {
    ANALYSIS.acquire().await.expect("never closed")
}

pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub text: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self { base: base.to_string(), http: Client::builder(TokioExecutor::new()).build_http(), token: None }
    }

    /// A client that sends `Authorization: Bearer <token>` unless a request sets its own.
    pub fn with_token(base: &str, token: &str) -> Self {
        Self { token: Some(token.to_string()), ..Self::new(base) }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Response {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(token) =
            self.token.as_ref().filter(|_| !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")))
        {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = self.http.request(req.body(Full::new(body.into())).unwrap()).await.expect("http request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("read body").to_bytes();
        Response { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path, &[("content-type", "application/json")], serde_json::to_vec(body).unwrap())
            .await
    }

    /// PATCH with a JSON merge patch.
    pub async fn patch_json(&self, path: &str, body: &Value) -> Response {
        let ct = [("content-type", "application/merge-patch+json")];
        self.request(Method::PATCH, path, &ct, serde_json::to_vec(body).unwrap()).await
    }

    /// GET /api/v1/scenario/{id}.
    pub async fn scenario(&self, id: uuid::Uuid) -> Value {
        self.get(&format!("/api/v1/scenario/{id}")).await.json()
    }

    /// GET /api/v1/prediction/{id}, up to 1,000 frames.
    pub async fn prediction(&self, id: uuid::Uuid) -> Value {
        let r = self.get(&format!("/api/v1/prediction/{id}?limit=1000")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json()
    }

    /// Waits until the scenario has `status`; returns it then.
    pub async fn wait_for_status(&self, id: uuid::Uuid, status: &str, timeout: Duration) -> Value {
        eventually(timeout, &format!("scenario {id} to be {status}"), || async {
            let s = self.scenario(id).await;
            (s["status"] == status).then_some(s)
        })
        .await
    }

    /// POST /api/v1/scenario/{id}/shutdown, which must be accepted.
    pub async fn shutdown_scenario(&self, id: uuid::Uuid) {
        let r = self.post_json(&format!("/api/v1/scenario/{id}/shutdown"), &serde_json::json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }

    /// POST /api/v1/scenario/init and return the new uuid.
    pub async fn create_scenario(&self, camera_url: &str) -> uuid::Uuid {
        self.create_scenario_with(camera_url, serde_json::json!({})).await
    }

    /// POST /api/v1/scenario/init with options (a JSON object) and return the new uuid.
    pub async fn create_scenario_with(&self, camera_url: &str, options: Value) -> uuid::Uuid {
        let mut body = options;
        body["camera_url"] = camera_url.into();
        let r = self.post_json("/api/v1/scenario/init", &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json()["scenario_uuid"].as_str().unwrap().parse().unwrap()
    }
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;
    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A fresh database (migrated), a broker, and the API serving on a free port.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_with_broker(Broker::start(BrokerStorage::Memory).expect("start broker"), adjust).await
    }

    /// The same with a broker of the test's own (one behind a proxy, say); `adjust` may point
    /// `kafka.brokers` elsewhere.
    pub async fn spawn_with_broker(broker: Broker, adjust: impl FnOnce(&mut Settings)) -> Self {
        let pg = cluster();
        let db = unique("t");
        pg.create_database(&db).await.expect("create database");
        let mut settings = Settings::default();
        settings.database = pg.settings(&db);
        settings.database.pool_size = 8;
        settings.kafka.brokers = vec![broker.addr()];
        settings.kafka.topic_init_scenario = unique("init");
        settings.kafka.topic_shutdown_scenario = unique("shutdown");
        settings.kafka.topic_update_scenario = unique("update");
        settings.kafka.topic_runner_control = unique("control");
        settings.kafka.topic_results = unique("results");
        settings.kafka.request_deadline_ms = 2_000;
        settings.api.listen = "127.0.0.1:0".parse().unwrap();
        settings.api.drain_timeout_ms = 2_000;
        settings.relay.metrics_listen = String::new();
        settings.relay.poll_interval_ms = 500;
        // Test cameras are loopback servers, which the default policy refuses.
        settings.destinations.allow = vec!["127.0.0.0/8".into(), "::1".into()];
        adjust(&mut settings);
        vap_core::db::migrate::run_with(&settings.database).await.expect("migrate");
        let pool = vap_core::db::pool(&settings.database).expect("pool");
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(settings.api.listen).await.unwrap();
        let running = vap_api::serve(
            listener,
            pool.clone(),
            settings.api.clone(),
            settings.database.clone(),
            option_defaults(&settings),
            vap_core::destination::DestinationPolicy::from_settings(&settings.destinations).unwrap(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        Self {
            api: ApiClient::new(&format!("http://{}", running.addr)),
            settings,
            pool,
            broker,
            shutdown,
            api_done: Some(running.done),
            relays: Vec::new(),
            _analysis_turn: None,
        }
    }

    /// An app whose API accepts file paths, with the relay (outbox + inbox) running in-process:
    /// what runner and orchestrator tests need.
    pub async fn spawn_for_runners() -> Self {
        let turn = analysis_turn().await;
        let mut app = Self::spawn_with(|s| s.api.allow_file_urls = true).await;
        app._analysis_turn = Some(turn);
        app.start_relay();
        app
    }

    /// Runs the relay (outbox relay + inbox) inside this process.
    pub fn start_relay(&mut self) -> CancellationToken {
        let token = CancellationToken::new();
        let settings = self.settings.clone();
        let t = token.clone();
        tokio::spawn(async move { vap_relay::run(settings, t).await.expect("relay") });
        self.relays.push(token.clone());
        token
    }

    /// The real vap-relay binary, configured through VAP_* like an operator would.
    pub fn spawn_relay_process(&self) -> Child {
        spawn_binary(env!("CARGO_BIN_EXE_vap-relay"), &self.env(), &[])
    }

    /// The settings as VAP_* environment variables.
    pub fn env(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        let mut env = self.kafka_login_env();
        env.extend([
            ("VAP_DATABASE__HOST".into(), s.database.host.clone()),
            ("VAP_DATABASE__PORT".into(), s.database.port.to_string()),
            ("VAP_DATABASE__USER".into(), s.database.user.clone()),
            ("VAP_DATABASE__DBNAME".into(), s.database.dbname.clone()),
            ("VAP_KAFKA__BROKERS".into(), s.kafka.brokers.join(",")),
            ("VAP_KAFKA__TOPIC_INIT_SCENARIO".into(), s.kafka.topic_init_scenario.clone()),
            ("VAP_KAFKA__TOPIC_SHUTDOWN_SCENARIO".into(), s.kafka.topic_shutdown_scenario.clone()),
            ("VAP_KAFKA__TOPIC_UPDATE_SCENARIO".into(), s.kafka.topic_update_scenario.clone()),
            ("VAP_KAFKA__TOPIC_RUNNER_CONTROL".into(), s.kafka.topic_runner_control.clone()),
            ("VAP_KAFKA__TOPIC_RESULTS".into(), s.kafka.topic_results.clone()),
            ("VAP_KAFKA__REQUEST_DEADLINE_MS".into(), s.kafka.request_deadline_ms.to_string()),
            ("VAP_RELAY__METRICS_LISTEN".into(), s.relay.metrics_listen.clone()),
            ("VAP_RELAY__POLL_INTERVAL_MS".into(), s.relay.poll_interval_ms.to_string()),
            ("VAP_RELAY__BATCH_SIZE".into(), s.relay.batch_size.to_string()),
            ("VAP_INBOX__ENABLED".into(), s.inbox.enabled.to_string()),
            ("VAP_DESTINATIONS__ALLOW".into(), s.destinations.allow.join(",")),
            ("VAP_LOG__LEVEL".into(), "warn".into()),
        ]);
        env
    }

    /// The broker login and TLS settings, when the test's broker wants them.
    fn kafka_login_env(&self) -> Vec<(String, String)> {
        let k = &self.settings.kafka;
        let mut env = Vec::new();
        if k.sasl_mechanism != vap_core::config::SaslMechanism::None {
            let mechanism = serde_json::to_value(k.sasl_mechanism).unwrap().as_str().unwrap().to_string();
            env.push(("VAP_KAFKA__SASL_MECHANISM".into(), mechanism));
            env.push(("VAP_KAFKA__SASL_USERNAME".into(), k.sasl_username.clone()));
            env.push(("VAP_KAFKA__SASL_PASSWORD".into(), k.sasl_password.expose().to_string()));
        }
        if let Some(ca) = &k.tls_ca_file {
            env.push(("VAP_KAFKA__TLS_CA_FILE".into(), ca.display().to_string()));
        }
        env
    }

    pub async fn kafka(&self) -> rskafka::client::Client {
        vap_core::kafka::builder(&self.settings.kafka).unwrap().build().await.expect("kafka client")
    }

    /// Every record currently on every partition of `topic`, with partition and offset.
    pub async fn read_topic(&self, topic: &str) -> Vec<(i32, i64, Record)> {
        read_topic(&self.kafka().await, topic, self.settings.kafka.partitions).await
    }

    /// Produces values to `results` keyed by scenario and signed with its key, as its runner
    /// would (a scenario this database does not know goes unsigned).
    pub async fn produce_results(&self, records: Vec<(uuid::Uuid, Vec<u8>)>) {
        self.produce_signed(&self.settings.kafka.topic_results.clone(), records).await;
    }

    /// The same to `topic` (`events`, say).
    pub async fn produce_signed(&self, topic: &str, records: Vec<(uuid::Uuid, Vec<u8>)>) {
        let mut ids: Vec<uuid::Uuid> = records.iter().map(|(u, _)| *u).collect();
        ids.sort_unstable();
        ids.dedup();
        let client = self.pool.get().await.unwrap();
        let keys: HashMap<uuid::Uuid, vap_core::signing::ResultsKey> = client
            .query("SELECT scenario_uuid, results_key FROM scenarios WHERE scenario_uuid = ANY($1)", &[&ids])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), vap_core::signing::ResultsKey::new(r.get(1))))
            .collect();
        let signed = records
            .into_iter()
            .map(|(uuid, value)| {
                let signature = keys.get(&uuid).map(|k| k.sign(&value));
                (uuid, value, signature)
            })
            .collect();
        self.produce_raw_to(topic, signed).await;
    }

    /// Produces values to `results` with whatever signature header the test gives (or none).
    pub async fn produce_raw(&self, records: Vec<(uuid::Uuid, Vec<u8>, Option<Vec<u8>>)>) {
        self.produce_raw_to(&self.settings.kafka.topic_results.clone(), records).await;
    }

    pub async fn produce_raw_to(&self, topic: &str, records: Vec<(uuid::Uuid, Vec<u8>, Option<Vec<u8>>)>) {
        let client = self.kafka().await;
        let partitions = self.settings.kafka.partitions;
        client.controller_client().unwrap().create_topic(topic, partitions, 1, 5_000).await.ok();
        let mut by_partition: HashMap<i32, Vec<Record>> = HashMap::new();
        for (uuid, value, signature) in records {
            let key = uuid.to_string().into_bytes();
            let p = vap_core::kafka::partition_for_key(&key, partitions);
            let headers = signature.map(|s| (vap_core::signing::SIGNATURE_HEADER.to_string(), s)).into_iter().collect();
            by_partition.entry(p).or_default().push(Record {
                key: Some(key),
                value: Some(value),
                headers,
                timestamp: chrono::Utc::now(),
            });
        }
        for (p, records) in by_partition {
            let pc = client.partition_client(topic, p, UnknownTopicHandling::Retry).await.unwrap();
            for chunk in records.chunks(500) {
                pc.produce(chunk.to_vec(), Compression::NoCompression).await.unwrap();
            }
        }
    }

    /// A scenario's results key, hex, as its runner gets it.
    pub async fn results_key(&self, id: uuid::Uuid) -> String {
        let client = self.pool.get().await.unwrap();
        client
            .query_one("SELECT encode(results_key, 'hex') FROM scenarios WHERE scenario_uuid = $1", &[&id])
            .await
            .unwrap()
            .get(0)
    }

    /// A scenario's creation time, RFC 3339: its runner's frame numbers count from it.
    pub async fn epoch(&self, id: uuid::Uuid) -> String {
        let client = self.pool.get().await.unwrap();
        let at: chrono::DateTime<chrono::Utc> =
            client.query_one("SELECT created_at FROM scenarios WHERE scenario_uuid = $1", &[&id]).await.unwrap().get(0);
        at.to_rfc3339()
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        let client = self.pool.get().await.unwrap();
        client.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// Records of a replaced runner of `scenario` (an earlier placement) the inbox set aside.
    pub async fn superseded_records(&self, scenario: uuid::Uuid) -> i64 {
        self.scalar(&format!(
            "SELECT count(*) FROM dead_letters WHERE record_key = convert_to('{scenario}', 'UTF8') AND reason LIKE 'superseded_placement%'"
        ))
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for r in &self.relays {
            r.cancel();
        }
    }
}

/// Every record of `topic` on a broker, in (partition, offset) order.
pub async fn read_topic(client: &rskafka::client::Client, topic: &str, partitions: i32) -> Vec<(i32, i64, Record)> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let pc = client.partition_client(topic, p, UnknownTopicHandling::Retry).await.unwrap();
        let mut offset = 0;
        let mut stalls = 0;
        loop {
            let (records, hw) = pc.fetch_records(offset, 1..8_000_000, 100).await.unwrap();
            if offset >= hw {
                break;
            }
            let before = offset;
            for r in records.into_iter().filter(|r| r.offset >= before) {
                offset = offset.max(r.offset + 1);
                out.push((p, r.offset, r.record));
            }
            if offset == before {
                stalls += 1;
                assert!(stalls < 50, "no progress reading {topic}/{p} at {offset} (hw {hw})");
            }
        }
    }
    out
}

/// Starts a binary that dies with the test (PR_SET_PDEATHSIG fires when the spawning test
/// thread ends, even if the test panicked before killing it).
pub fn spawn_binary(path: &str, env: &[(String, String)], args: &[&str]) -> Child {
    let mut cmd = Command::new(path);
    vap_core::sys::die_with_parent(&mut cmd, vap_core::sys::SIGKILL);
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn binary")
}

/// Polls `check` until it returns Some, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `camera_offline` event of `scenario` in `frame`, as its runner sends it to `events`.
pub fn camera_offline_json(scenario: uuid::Uuid, frame: i64) -> Vec<u8> {
    let kind = vap_core::events::SceneEventKind::CameraOffline;
    serde_json::to_vec(&vap_core::events::SceneEvent::camera(scenario, kind, frame, chrono::Utc::now(), "lost".into()))
        .unwrap()
}

pub fn result_json(scenario: uuid::Uuid, frame: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "scenario_uuid": scenario,
        "frame_number": frame,
        "timestamp": "2026-11-24T10:00:00Z",
        "detections": [{"class": "person", "confidence": 0.87, "bbox": [10.0, 20.0, 110.0, 220.0 + frame as f64]}],
        "model": "ssdlite_person_300",
    }))
    .unwrap()
}

/// A loopback TCP proxy that can stop forwarding without closing anything: a broker (or any
/// peer) that stops answering, the fault no connection error reports.
pub struct BlackHoleProxy {
    pub addr: std::net::SocketAddr,
    holed: tokio::sync::watch::Sender<bool>,
}

impl BlackHoleProxy {
    /// Listens on `listener` and forwards each connection to `target`.
    pub fn start(listener: tokio::net::TcpListener, target: String) -> Self {
        let addr = listener.local_addr().unwrap();
        let (holed, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(Self::pump(cr, uw, watch.clone()));
                tokio::spawn(Self::pump(ur, cw, watch.clone()));
            }
        });
        Self { addr, holed }
    }

    /// Stops (true) or resumes (false) forwarding on every connection, old and new.
    pub fn hole(&self, holed: bool) {
        self.holed.send_replace(holed);
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut holed: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if holed.wait_for(|h| !*h).await.is_err() {
                return;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Bytes read just as the hole opened wait for it to close.
            if holed.wait_for(|h| !*h).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

/// Where scripts/setup keeps what the tests need (venvs, apt's downloads): ~/.cache/vap.
pub fn cache_dir() -> std::path::PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    std::env::var("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(&home).join(".cache"))
        .join("vap")
}

/// A CA and a certificate it signed for 127.0.0.1 with its key (PEM, PKCS#8), made by openssl
/// in `dir`: what a broker that speaks TLS presents (cert, key) and what its clients trust (CA).
pub struct TestCertificates {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

pub fn test_certificates(dir: &std::path::Path) -> TestCertificates {
    let openssl = |args: &[&str]| {
        let out =
            Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (scripts/setup installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=vap test CA", "-days", "2"],
        ]
        .concat(),
    );
    openssl(&[&["req"], &ec[..], &["-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    TestCertificates { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") }
}

pub async fn reqwest_text(url: &str) -> String {
    try_text(url).await.unwrap_or_else(|| panic!("no answer from {url}"))
}

/// The body at `url`, or None while nothing answers there.
pub async fn try_text(url: &str) -> Option<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client.get(url.parse().unwrap()).await.ok()?;
    String::from_utf8(resp.into_body().collect().await.ok()?.to_bytes().to_vec()).ok()
}

/// One series (`name` or `name{labels}`) as a process serves it on its /metrics at `listen`;
/// None while nothing answers there or the series is not served yet.
pub async fn metric(listen: &str, series: &str) -> Option<f64> {
    let text = try_text(&format!("http://{listen}/metrics")).await?;
    let prefix = format!("{series} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}
