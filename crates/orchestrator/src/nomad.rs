//! The Nomad backend: one service job per scenario, `vap-runner-<uuid>`, through a small typed
//! client of Nomad's HTTP API on vap's own hyper stack.
//!
//! Why not the `nomad-client` crate: version 0.0.10 (generated for Nomad 0.11) sends
//! `{"Job":null}` from `RegisterJobRequest::new`, never sends the ACL token, drops response
//! headers (so no `X-Nomad-Index` and no blocking queries), keeps indexes in i32 and has no
//! TLS. What vap needs is five endpoints; they are here.
//!
//! Each job's allocations are watched with blocking queries (`?index=&wait=`, fed by
//! `X-Nomad-Index`); a change wakes the orchestrator's reconcile loop.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use super::backend::{runner_name, runner_scenario, BackendError, RunnerState, WorkerInfo, RUNNER_PREFIX};
use vap_core::backoff::Backoff;
use vap_core::config::NomadBackendSettings;
use vap_core::job::RunnerJob;

const BACKEND: &str = "nomad";
const NS_PER_SEC: u64 = 1_000_000_000;
const WATCH_MIN_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    #[error("nomad {method} {path}: {reason}")]
    Transport { method: Method, path: String, reason: String },
    /// Nomad answers errors in plain text with the real status code.
    #[error("nomad {method} {path}: {status}: {body}")]
    Status { method: Method, path: String, status: StatusCode, body: String },
    #[error("nomad {path}: unexpected answer: {source}")]
    Decode { path: String, source: serde_json::Error },
    #[error("nomad: {0}")]
    Tls(#[from] vap_core::tls::TlsError),
}

impl From<NomadError> for BackendError {
    fn from(e: NomadError) -> Self {
        match e {
            NomadError::Status { status, .. } if status.is_client_error() => {
                BackendError::Rejected { backend: BACKEND, message: e.to_string() }
            }
            _ => BackendError::Unavailable { backend: BACKEND, message: e.to_string() },
        }
    }
}

/// Go's nil slices and maps arrive as `null`.
fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct JobStub {
    #[serde(rename = "ID")]
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub stop: bool,
    #[serde(default)]
    pub job_summary: Option<JobSummary>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "PascalCase")]
pub struct JobSummary {
    #[serde(default, deserialize_with = "null_as_default")]
    pub summary: HashMap<String, GroupSummary>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct GroupSummary {
    pub queued: u64,
    pub complete: u64,
    pub failed: u64,
    pub running: u64,
    pub starting: u64,
    pub lost: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AllocStub {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub node_name: String,
    pub client_status: String,
    pub desired_status: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub task_states: HashMap<String, TaskState>,
    #[serde(default)]
    pub create_index: u64,
    /// The version of its job it runs (each registration of a changed job is a new version).
    #[serde(default)]
    pub job_version: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskState {
    pub state: String,
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub restarts: u64,
    /// RFC 3339; Go's zero time when not started.
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub events: Vec<TaskEvent>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskEvent {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub exit_code: i64,
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The HTTP API client: token, namespace and region on every call.
pub struct NomadClient {
    base: String,
    token: String,
    namespace: String,
    region: String,
    timeout: Duration,
    http: HttpsClient,
}

impl NomadClient {
    pub fn new(s: &NomadBackendSettings) -> Result<Self, NomadError> {
        let tls = vap_core::tls::client_config(s.ca_file.as_deref())?;
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            base: s.address.trim_end_matches('/').to_string(),
            token: s.token.expose().trim().to_string(),
            namespace: s.namespace.clone(),
            region: s.region.clone(),
            timeout: Duration::from_millis(s.request_timeout_ms),
            http,
        })
    }

    /// One call. `blocking` adds `index`/`wait` and extends the timeout by the wait.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        blocking: Option<(u64, Duration)>,
    ) -> Result<(Bytes, u64), NomadError> {
        let mut params: Vec<(&str, String)> = vec![("namespace", self.namespace.clone())];
        if !self.region.is_empty() {
            params.push(("region", self.region.clone()));
        }
        params.extend(query.iter().cloned());
        let mut timeout = self.timeout;
        if let Some((index, wait)) = blocking {
            params.push(("index", index.to_string()));
            params.push(("wait", format!("{}ms", wait.as_millis())));
            // The server holds the call up to wait + wait/16 of jitter.
            timeout += wait + wait / 16;
        }
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let uri = format!("{}{path}?{query}", self.base);
        let transport =
            |reason: String| NomadError::Transport { method: method.clone(), path: path.to_string(), reason };
        let mut req = Request::builder().method(method.clone()).uri(&uri);
        if !self.token.is_empty() {
            req = req.header("X-Nomad-Token", &self.token);
        }
        let payload = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(v).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(payload)).map_err(|e| transport(e.to_string()))?;
        let resp = tokio::time::timeout(timeout, self.http.request(req))
            .await
            .map_err(|_| transport(format!("no answer within {timeout:?}")))?
            .map_err(|e| transport(e.to_string()))?;
        let status = resp.status();
        let index =
            resp.headers().get("X-Nomad-Index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        let bytes = resp.into_body().collect().await.map_err(|e| transport(e.to_string()))?.to_bytes();
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes).trim().to_string();
            return Err(NomadError::Status { method, path: path.to_string(), status, body });
        }
        Ok((bytes, index))
    }

    fn decode<T: for<'de> Deserialize<'de>>(path: &str, bytes: &[u8]) -> Result<T, NomadError> {
        serde_json::from_slice(bytes).map_err(|source| NomadError::Decode { path: path.to_string(), source })
    }

    /// `PUT /v1/jobs`: register or update (idempotent for an unchanged spec).
    pub async fn register_job(&self, job: &Value) -> Result<u64, NomadError> {
        let (_, index) = self.call(Method::PUT, "/v1/jobs", &[], Some(&json!({ "Job": job })), None).await?;
        Ok(index)
    }

    /// `PUT /v1/var/:path`: a Nomad Variable (Nomad encrypts it at rest; tasks of the job the
    /// path names read it through a template, with their workload identity).
    pub async fn put_variable(&self, path: &str, items: &Value) -> Result<(), NomadError> {
        let url = format!("/v1/var/{path}");
        let body = json!({ "Namespace": self.namespace, "Path": path, "Items": items });
        self.call(Method::PUT, &url, &[], Some(&body), None).await?;
        Ok(())
    }

    /// `DELETE /v1/var/:path` (gone already is fine).
    pub async fn delete_variable(&self, path: &str) -> Result<(), NomadError> {
        match self.call(Method::DELETE, &format!("/v1/var/{path}"), &[], None, None).await {
            Err(NomadError::Status { status, .. }) if status == 404 => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// `DELETE /v1/job/:id?purge=true`: stops the allocations and removes the job.
    pub async fn deregister_job(&self, id: &str, purge: bool) -> Result<(), NomadError> {
        let path = format!("/v1/job/{}", escape(id));
        self.call(Method::DELETE, &path, &[("purge", purge.to_string())], None, None).await?;
        Ok(())
    }

    /// `GET /v1/jobs?prefix=`.
    pub async fn list_jobs(&self, prefix: &str) -> Result<Vec<JobStub>, NomadError> {
        let (bytes, _) = self.call(Method::GET, "/v1/jobs", &[("prefix", prefix.to_string())], None, None).await?;
        Self::decode("/v1/jobs", &bytes)
    }

    /// `GET /v1/job/:id/allocations`, blocking until the index passes `index` (or `wait`).
    pub async fn job_allocations(
        &self,
        id: &str,
        blocking: Option<(u64, Duration)>,
    ) -> Result<(Vec<AllocStub>, u64), NomadError> {
        let path = format!("/v1/job/{}/allocations", escape(id));
        let (bytes, index) = self.call(Method::GET, &path, &[], None, blocking).await?;
        Ok((Self::decode(&path, &bytes)?, index))
    }
}

fn escape(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}

/// The job vap submits for a scenario (golden file: tests/golden/nomad_job.json).
/// Where a runner's secrets live: the path Nomad lets that job's tasks read by default.
pub fn secrets_variable(scenario: Uuid) -> String {
    format!("nomad/jobs/{}", runner_name(scenario))
}

/// The file the job's template renders the secrets into, in the task's private secrets dir.
const SECRETS_FILE: &str = "secrets/vap-job.json";

/// `lost_after`: how long a disconnected client's allocation counts as unknown before it is lost.
pub fn job_spec(s: &NomadBackendSettings, spec: &RunnerJob, lost_after: Duration) -> Value {
    let id = runner_name(spec.scenario);
    // No secret in the job: Nomad shows jobs to anyone with read-job, and interpolates `${..}`
    // in Env. The camera URL and the results key are a Variable, rendered to a file only the
    // task reads.
    let mut env: BTreeMap<String, String> =
        spec.env_with(&s.runner_env, "file:${NOMAD_SECRETS_DIR}/vap-job.json").into_iter().collect();
    // The options hold user text (names of the scenario, zones, lines), and Nomad's client
    // interpolates `${..}` in Env with no escape: a `$` goes as the JSON escape `\u0024`,
    // which the runner's JSON parser reads back as `$`.
    if let Some(options) = env.get_mut(vap_core::job::ENV_SCENARIO_OPTIONS) {
        *options = options.replace('$', "\\u0024");
    }
    let template =
        format!("{{{{ with nomadVar \"{}\" }}}}{{{{ .job }}}}{{{{ end }}}}", secrets_variable(spec.scenario));
    let args = spec.args(s.runner_config.as_deref());
    let config = match s.driver.as_str() {
        "docker" => json!({ "image": s.image, "args": args }),
        _ => json!({ "command": s.command, "args": args }),
    };
    json!({
        "ID": id,
        "Name": id,
        "Type": "service",
        "Namespace": s.namespace,
        "Datacenters": s.datacenters,
        "Meta": { "vap_scenario": spec.scenario.to_string(), "vap_role": "runner" },
        "TaskGroups": [{
            "Name": "runner",
            "Count": 1,
            "RestartPolicy": {
                "Attempts": s.restart_attempts,
                "Interval": s.restart_interval_secs * NS_PER_SEC,
                "Delay": s.restart_delay_secs * NS_PER_SEC,
                "Mode": "fail"
            },
            // A client cut off keeps running its allocation: Nomad must not start a twin of the
            // same placement beside it. vap places the replacement itself, as a new placement
            // (a new job version) whose records fence the old allocation's.
            "Disconnect": {
                "LostAfter": lost_after.as_nanos() as u64,
                "Replace": false,
                "Reconcile": "keep_replacement"
            },
            "ReschedulePolicy": {
                "Attempts": s.reschedule_attempts,
                "Interval": s.reschedule_interval_secs * NS_PER_SEC,
                "Delay": s.restart_delay_secs * NS_PER_SEC,
                "DelayFunction": "exponential",
                "MaxDelay": 300 * NS_PER_SEC,
                "Unlimited": false
            },
            "Tasks": [{
                "Name": "runner",
                "Driver": s.driver,
                "Config": config,
                "Env": env,
                "Templates": [{
                    "EmbeddedTmpl": template,
                    "DestPath": SECRETS_FILE,
                    "Perms": "0400",
                    "ChangeMode": "restart"
                }],
                "Resources": { "CPU": s.cpu_mhz, "MemoryMB": s.memory_mb },
                "KillSignal": "SIGTERM",
                "KillTimeout": s.kill_timeout_secs * NS_PER_SEC
            }]
        }]
    })
}

#[derive(Debug, Clone)]
struct AllocView {
    state: RunnerState,
    node: Option<String>,
    restarts: u32,
    started_at: Option<DateTime<Utc>>,
    /// The Nomad index it is as of: a view older than the job's last registration is stale.
    index: u64,
}

pub struct NomadBackend {
    settings: NomadBackendSettings,
    /// `orchestrator.host_down_after_secs`: a disconnected client's allocations are lost after it.
    lost_after: Duration,
    client: Arc<NomadClient>,
    /// What each job's allocation watcher saw last.
    views: Arc<Mutex<HashMap<Uuid, AllocView>>>,
    watchers: Mutex<HashMap<Uuid, tokio::task::JoinHandle<()>>>,
    /// Woken when a watched allocation changes.
    pub changed: Arc<Notify>,
}

impl NomadBackend {
    pub fn new(settings: NomadBackendSettings, lost_after: Duration) -> Result<Self, NomadError> {
        Ok(Self {
            lost_after,
            client: Arc::new(NomadClient::new(&settings)?),
            settings,
            views: Arc::new(Mutex::new(HashMap::new())),
            watchers: Mutex::new(HashMap::new()),
            changed: Arc::new(Notify::new()),
        })
    }

    pub async fn list(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        let jobs = self.client.list_jobs(RUNNER_PREFIX).await?;
        let mut out = Vec::with_capacity(jobs.len());
        let mut seen = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Some(scenario) = runner_scenario(&job.id) else { continue };
            seen.push(scenario);
            self.watch(scenario, &job.id);
            let view = vap_core::sys::lock(&self.views).get(&scenario).cloned();
            let state = job_state(&job, view.as_ref().map(|v| &v.state));
            out.push(WorkerInfo {
                scenario,
                state,
                backend_ref: job.id.clone(),
                node: view.as_ref().and_then(|v| v.node.clone()),
                restarts: view.as_ref().map(|v| v.restarts).unwrap_or(0),
                started_at: view.as_ref().and_then(|v| v.started_at),
                // Nomad itself stops the allocations of a job's earlier versions.
                placement: None,
            });
        }
        // Jobs gone (purged): stop watching them.
        let mut watchers = vap_core::sys::lock(&self.watchers);
        watchers.retain(|id, handle| {
            let keep = seen.contains(id);
            if !keep {
                handle.abort();
            }
            keep
        });
        vap_core::sys::lock(&self.views).retain(|id, _| seen.contains(id));
        Ok(out)
    }

    pub async fn start(&self, spec: &RunnerJob) -> Result<WorkerInfo, BackendError> {
        let secrets = serde_json::to_string(&spec.secrets()).unwrap_or_default();
        self.client.put_variable(&secrets_variable(spec.scenario), &json!({ "job": secrets })).await?;
        let job = job_spec(&self.settings, spec, self.lost_after);
        let index = self.client.register_job(&job).await?;
        // Until the watch sees this version's allocation, the job is starting: an answer from
        // before the registration (a lost allocation) must not move the camera again.
        let starting = AllocView { state: RunnerState::Starting, node: None, restarts: 0, started_at: None, index };
        vap_core::sys::lock(&self.views).insert(spec.scenario, starting);
        let id = runner_name(spec.scenario);
        self.watch(spec.scenario, &id);
        Ok(WorkerInfo {
            scenario: spec.scenario,
            state: RunnerState::Starting,
            backend_ref: id,
            node: None,
            restarts: 0,
            started_at: None,
            placement: None,
        })
    }

    pub async fn stop(&self, scenario: Uuid) -> Result<(), BackendError> {
        // Purge: the job is gone at once, its allocations are stopped (SIGTERM, then
        // KillTimeout). Re-registering later starts afresh.
        self.client.deregister_job(&runner_name(scenario), true).await?;
        self.client.delete_variable(&secrets_variable(scenario)).await?;
        Ok(())
    }

    pub async fn forget(&self, scenario: Uuid) -> Result<(), BackendError> {
        self.stop(scenario).await
    }

    /// Stops every allocation watcher (leadership lost, or shutdown); the next leader's list
    /// starts them again.
    pub fn release(&self) {
        for (_, watcher) in vap_core::sys::lock(&self.watchers).drain() {
            watcher.abort();
        }
        vap_core::sys::lock(&self.views).clear();
    }

    fn watch(&self, scenario: Uuid, job_id: &str) {
        let mut watchers = vap_core::sys::lock(&self.watchers);
        if watchers.get(&scenario).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let (client, views, changed, job_id) =
            (Arc::clone(&self.client), Arc::clone(&self.views), Arc::clone(&self.changed), job_id.to_string());
        let wait = Duration::from_millis(self.settings.blocking_wait_ms);
        watchers.insert(
            scenario,
            tokio::spawn(async move {
                let mut index = 0u64;
                let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
                loop {
                    match client.job_allocations(&job_id, Some((index, wait))).await {
                        Ok((allocs, new_index)) => {
                            backoff.reset();
                            // Wake-ups can be spurious: compare the data, not just the index.
                            let view = AllocView { index: new_index, ..alloc_view(&allocs) };
                            let differs = {
                                let mut views = vap_core::sys::lock(&views);
                                // An index that went backwards (agent restart) is news too.
                                let newer =
                                    new_index < index || views.get(&scenario).is_none_or(|v| view.index >= v.index);
                                let differs = views.get(&scenario).map(|v| (&v.state, v.restarts, &v.node))
                                    != Some((&view.state, view.restarts, &view.node));
                                if newer {
                                    views.insert(scenario, view);
                                }
                                newer && differs
                            };
                            if differs {
                                changed.notify_one();
                            }
                            // An index that went backwards (agent restart) restarts the watch.
                            index = if new_index < index { 0 } else { new_index };
                            // Nomad's allocation index moves for every allocation of every job,
                            // so during churn each watcher wakes for others' changes: a short
                            // pause bounds the query rate; quiet jobs still block for `wait`.
                            tokio::time::sleep(WATCH_MIN_INTERVAL).await;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, job = job_id, "allocation watch failed; retrying");
                            tokio::time::sleep(backoff.next_delay().unwrap_or(Duration::from_secs(5))).await;
                        }
                    }
                }
            }),
        );
    }
}

impl Drop for NomadBackend {
    fn drop(&mut self) {
        self.release();
    }
}

/// The newest allocation says where the runner is and how it fares, except that an allocation
/// of the job's current version lost with its client makes the whole job lost: Nomad replaces it
/// with the same version (the same placement), while the old one may still run on its client
/// cut off, so vap must place the camera again in a new placement.
fn alloc_view(allocs: &[AllocStub]) -> AllocView {
    let newest = allocs.iter().max_by_key(|a| a.create_index);
    let Some(a) = newest else {
        return AllocView { state: RunnerState::Starting, node: None, restarts: 0, started_at: None, index: 0 };
    };
    let current = allocs.iter().map(|a| a.job_version).max().unwrap_or(0);
    if let Some(lost) = allocs.iter().find(|a| a.job_version == current && a.client_status == "lost") {
        return AllocView {
            state: RunnerState::Lost { node: lost.node_name.clone() },
            node: Some(lost.node_name.clone()).filter(|n| !n.is_empty()),
            restarts: 0,
            started_at: None,
            index: 0,
        };
    }
    let task = a.task_states.get("runner");
    let terminal = a.desired_status != "run" || matches!(a.client_status.as_str(), "complete" | "failed" | "lost");
    let node = || a.node_name.clone();
    let state = match (a.client_status.as_str(), terminal) {
        // Its client stopped heartbeating: not yet lost, its runner may still run.
        ("unknown", _) if a.desired_status == "run" => RunnerState::Unreachable { node: node() },
        (_, true) if a.desired_status != "run" => RunnerState::Stopping,
        ("complete", true) => RunnerState::Exited { code: 0 },
        ("failed", true) | ("lost", true) => {
            let code = task
                .and_then(|t| t.events.iter().rev().find(|e| e.kind == "Terminated"))
                .map(|e| e.exit_code)
                .unwrap_or(-1);
            RunnerState::Failed {
                reason: format!("nomad allocation {} {} (last exit code {code})", a.id, a.client_status),
            }
        }
        ("running", false) if task.is_some_and(|t| t.state == "running") => RunnerState::Running,
        _ => RunnerState::Starting,
    };
    // Restarts within this allocation, plus one per earlier (rescheduled) allocation.
    let restarts = task.map(|t| t.restarts).unwrap_or(0) + allocs.len().saturating_sub(1) as u64;
    let started_at = task
        .and_then(|t| t.started_at.as_deref())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| t.timestamp() > 0);
    AllocView {
        state,
        node: Some(a.node_name.clone()).filter(|n| !n.is_empty()),
        restarts: restarts as u32,
        started_at,
        index: 0,
    }
}

/// The job list is the truth about existence; the allocation watch adds the detail.
fn job_state(job: &JobStub, watched: Option<&RunnerState>) -> RunnerState {
    let total = job
        .job_summary
        .as_ref()
        .map(|s| {
            s.summary.values().fold(GroupSummary::default(), |a, g| GroupSummary {
                queued: a.queued + g.queued,
                complete: a.complete + g.complete,
                failed: a.failed + g.failed,
                running: a.running + g.running,
                starting: a.starting + g.starting,
                lost: a.lost + g.lost,
            })
        })
        .unwrap_or_default();
    if job.stop {
        return if total.running + total.starting > 0 {
            RunnerState::Stopping
        } else {
            RunnerState::Exited { code: 0 }
        };
    }
    // Before the job's own status: a lost allocation leaves the job dead, but not given up.
    if let Some(state @ (RunnerState::Lost { .. } | RunnerState::Unreachable { .. })) = watched {
        return state.clone();
    }
    if job.status == "dead" {
        // A service job only dies for good when restarts and reschedules are spent.
        return if total.failed + total.lost > 0 {
            match watched {
                Some(RunnerState::Failed { reason }) => RunnerState::Failed { reason: reason.clone() },
                _ => RunnerState::Failed { reason: "nomad gave up: restarts and reschedules exhausted".into() },
            }
        } else {
            RunnerState::Exited { code: 0 }
        };
    }
    match watched {
        Some(RunnerState::Running) => RunnerState::Running,
        Some(RunnerState::Stopping) => RunnerState::Stopping,
        _ if total.running > 0 => RunnerState::Running,
        _ => RunnerState::Starting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> NomadBackendSettings {
        NomadBackendSettings {
            runner_env: vec!["VAP_KAFKA__BROKERS=kafka-1:9092,kafka-2:9092".into(), "VAP_LOG__JSON=true".into()],
            ..NomadBackendSettings::default()
        }
    }

    #[test]
    fn job_matches_the_golden_file() {
        let spec = crate::backend::example_job();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/nomad_job.json");
        if std::env::var("VAP_WRITE_GOLDEN").is_ok_and(|v| v == "1") {
            let text = serde_json::to_string_pretty(&job_spec(&settings(), &spec, Duration::from_secs(30))).unwrap();
            std::fs::write(&path, text + "\n").unwrap();
        }
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default()).unwrap();
        assert_eq!(
            job_spec(&settings(), &spec, Duration::from_secs(30)),
            golden,
            "{}",
            serde_json::to_string_pretty(&job_spec(&settings(), &spec, Duration::from_secs(30))).unwrap()
        );
        // No `${` left for Nomad to interpolate, and the runner reads the options as they were.
        let job = job_spec(&settings(), &spec, Duration::from_secs(30));
        let options = job["TaskGroups"][0]["Tasks"][0]["Env"][vap_core::job::ENV_SCENARIO_OPTIONS].as_str().unwrap();
        assert!(!options.contains("${"), "{options}");
        let read: vap_core::options::ScenarioOptions = serde_json::from_str(options).unwrap();
        assert_eq!(read, spec.options);
    }

    #[test]
    fn decodes_nomad_shapes_with_nulls() {
        let allocs: Vec<AllocStub> = serde_json::from_str(
            r#"[{"ID":"a1","NodeName":"host-1","ClientStatus":"running","DesiredStatus":"run","CreateIndex":14,
                 "TaskStates":{"runner":{"State":"running","Failed":false,"Restarts":2,"StartedAt":"2026-11-24T08:00:01.123456789Z",
                 "FinishedAt":"0001-01-01T00:00:00Z","Events":null}},"DeploymentStatus":null}]"#,
        )
        .unwrap();
        let v = alloc_view(&allocs);
        assert_eq!((v.state, v.node.as_deref(), v.restarts), (RunnerState::Running, Some("host-1"), 2));
        let job: JobStub = serde_json::from_str(r#"{"ID":"vap-runner-x","Status":"dead","Stop":false,"JobSummary":{"Summary":{"runner":{"Failed":1}},"Children":null}}"#).unwrap();
        assert!(matches!(job_state(&job, None), RunnerState::Failed { .. }));
        let pending: JobStub =
            serde_json::from_str(r#"{"ID":"vap-runner-x","Status":"pending","JobSummary":{"Summary":null}}"#).unwrap();
        assert_eq!(job_state(&pending, None), RunnerState::Starting);
    }
}
