//! A test double of the Nomad agent's HTTP API, built from ../shared/reference/nomad-http-api.md
//! (no Nomad binary can be had here). It keeps Nomad's shapes (PascalCase keys, `null` for nil
//! lists and maps, nanosecond durations and timestamps), its blocking queries (`index`/`wait`,
//! `X-Nomad-Index`), ACL tokens, namespaces and its plain-text errors with their real status
//! codes, and it really runs each allocation's task (raw_exec/exec: the command, its args and
//! env) with the job's restart and reschedule policies, on two pretend client nodes. Variables
//! (`/v1/var/`) are kept, and a task's templates of the one form vap writes
//! (`{{ with nomadVar "path" }}{{ .item }}{{ end }}`) are rendered into its task directory, with
//! `${NOMAD_SECRETS_DIR}` and the like interpolated in its env, before it starts. A client can
//! be cut off as a network partition would (`partition`): its allocations turn `unknown` (and
//! are replaced at once unless `Disconnect.Replace` is false), then `lost` after the group's
//! `Disconnect.LostAfter`, told to stop and replaced by an allocation of the same job version;
//! their tasks keep running, deaf to stops, until the client is back (`heal`).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

const NS: u64 = 1_000_000_000;
const NODES: [&str; 2] = ["client-1", "client-2"];

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Clone)]
struct Job {
    spec: Value,
    stop: bool,
    version: u64,
    create_index: u64,
    modify_index: u64,
    job_modify_index: u64,
    submit_time: u64,
    /// Reschedules done (new allocations after a failed one).
    reschedules: Vec<Instant>,
}

#[derive(Clone)]
struct Alloc {
    id: String,
    namespace: String,
    job_id: String,
    name: String,
    task: String,
    node: &'static str,
    desired: &'static str,
    client: &'static str,
    task_state: &'static str,
    failed: bool,
    restarts: u64,
    started_at: String,
    finished_at: String,
    events: Vec<Value>,
    create_index: u64,
    modify_index: u64,
    create_time: u64,
    modify_time: u64,
    pid: Option<u32>,
    /// The job version it runs.
    version: u64,
}

#[derive(Default)]
struct Inner {
    index: u64,
    jobs: BTreeMap<(String, String), Job>,
    allocs: BTreeMap<String, Alloc>,
    /// Allocation ids by (namespace, job), so per-job reads don't scan every allocation.
    by_job: HashMap<(String, String), Vec<String>>,
    namespaces: Vec<String>,
    next_node: usize,
    placements: u64,
    /// Variables by (namespace, path): their items.
    variables: HashMap<(String, String), Value>,
    /// Client nodes cut off from the servers.
    partitioned: Vec<&'static str>,
}

struct State {
    inner: Mutex<Inner>,
    index: tokio::sync::watch::Sender<u64>,
    token: Option<String>,
    /// The allocations' task directories.
    dir: tempfile::TempDir,
}

impl Inner {
    fn allocs_of<'a>(&'a self, namespace: &str, job_id: &str) -> impl Iterator<Item = &'a Alloc> + 'a {
        self.by_job
            .get(&(namespace.to_string(), job_id.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.allocs.get(id))
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        vap_core::sys::lock(&self.inner)
    }

    /// Every mutation raises the one global index and wakes blocked readers.
    fn bump(&self, inner: &mut Inner) -> u64 {
        inner.index += 1;
        let _ = self.index.send(inner.index);
        inner.index
    }
}

/// A running double; dropped, it stops serving (tasks it started are killed by the test's
/// process-death signal, or by `stop_all`).
pub struct NomadDouble {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl NomadDouble {
    /// Serves on a free loopback port; with `token`, every call needs it (ACLs on).
    pub async fn start(token: Option<&str>) -> NomadDouble {
        let (index, _) = tokio::sync::watch::channel(1);
        let state = Arc::new(State {
            inner: Mutex::new(Inner { index: 1, namespaces: vec!["default".into()], ..Inner::default() }),
            index,
            token: token.map(str::to_string),
            dir: tempfile::tempdir().unwrap(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        NomadDouble { addr, state }
    }

    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add_namespace(&self, name: &str) {
        self.state.lock().namespaces.push(name.to_string());
    }

    /// Allocations placed so far (for the benchmark).
    pub fn placements(&self) -> u64 {
        self.state.lock().placements
    }

    /// Pids of tasks running now, by job id.
    pub fn running_tasks(&self) -> HashMap<String, Vec<u32>> {
        let mut out: HashMap<String, Vec<u32>> = HashMap::new();
        for a in self.state.lock().allocs.values() {
            if let Some(pid) = a.pid {
                out.entry(a.job_id.clone()).or_default().push(pid);
            }
        }
        out
    }

    /// Cuts `node` off from the servers: its allocations turn `unknown` (replaced at once unless
    /// their group's `Disconnect.Replace` is false), then, after `Disconnect.LostAfter`, `lost`:
    /// told to stop and replaced with the same job version. Their tasks keep running and no stop
    /// reaches them.
    pub fn partition(&self, node: &str) {
        let mut inner = self.state.lock();
        let Some(node) = NODES.iter().copied().find(|n| *n == node) else { return };
        inner.partitioned.push(node);
        let cut: Vec<String> = inner
            .allocs
            .values()
            .filter(|a| a.node == node && a.desired == "run" && matches!(a.client, "running" | "pending"))
            .map(|a| a.id.clone())
            .collect();
        for id in cut {
            let index = self.state.bump(&mut inner);
            let Some(lost_after) =
                inner.allocs.get(&id).and_then(|a| task_of(&inner, &a.namespace, &a.job_id)).map(|(g, _)| {
                    let disconnect = &g["Disconnect"];
                    (disconnect["LostAfter"].as_u64().unwrap_or(0), disconnect["Replace"].as_bool().unwrap_or(true))
                })
            else {
                continue;
            };
            let a = inner.allocs.get_mut(&id).expect("listed above");
            a.client = "unknown";
            a.modify_index = index;
            a.modify_time = now_ns();
            let (namespace, job_id) = (a.namespace.clone(), a.job_id.clone());
            if lost_after.1 {
                place(&self.state, &mut inner, &namespace, &job_id, 0);
            }
            let state = Arc::clone(&self.state);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_nanos(lost_after.0)).await;
                let mut inner = state.lock();
                let index = state.bump(&mut inner);
                let Some(a) = inner.allocs.get_mut(&id) else { return };
                if a.client != "unknown" {
                    return;
                }
                a.client = "lost";
                a.desired = "stop";
                a.modify_index = index;
                let (namespace, job_id, version) = (a.namespace.clone(), a.job_id.clone(), a.version);
                // Lost: replaced by the scheduler, with the same version (unless it was already,
                // at the disconnect, or the job has moved on).
                let current = inner.jobs.get(&(namespace.clone(), job_id.clone())).map(|j| j.version);
                if !lost_after.1 && current == Some(version) {
                    place(&state, &mut inner, &namespace, &job_id, 0);
                }
            });
        }
    }

    /// `node` reaches the servers again: what was stopped meanwhile is stopped there now.
    pub fn heal(&self, node: &str) {
        let mut inner = self.state.lock();
        inner.partitioned.retain(|n| *n != node);
        let index = self.state.bump(&mut inner);
        for a in inner.allocs.values_mut().filter(|a| a.node == node) {
            match (a.desired, a.pid) {
                ("stop", Some(pid)) => {
                    vap_core::sys::signal(pid, vap_core::sys::SIGTERM);
                }
                ("run", Some(_)) if matches!(a.client, "unknown" | "lost") => {
                    a.client = "running";
                    a.modify_index = index;
                }
                _ => {}
            }
        }
    }

    /// Kills every task, for good (test cleanup: nothing is restarted afterwards).
    pub fn kill_all(&self) {
        for a in self.state.lock().allocs.values_mut() {
            a.desired = "stop";
            if let Some(pid) = a.pid {
                vap_core::sys::signal(pid, vap_core::sys::SIGKILL);
            }
        }
    }
}

impl Drop for NomadDouble {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn reply(value: &Value, index: u64, read: bool) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("X-Nomad-Index", index.to_string());
    if read {
        r = r.header("X-Nomad-KnownLeader", "true").header("X-Nomad-LastContact", "0");
    }
    r.body(Full::new(Bytes::from(serde_json::to_vec(value).unwrap()))).unwrap()
}

/// Go's duration strings as Nomad parses `wait` ("500ms", "5s", "1m").
fn parse_go_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

async fn handle(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let query: HashMap<String, String> =
        req.uri().query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    if let Some(expected) = &state.token {
        let header =
            req.headers().get("X-Nomad-Token").and_then(|v| v.to_str().ok()).map(str::to_string).or_else(|| {
                req.headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_string)
            });
        match header.map(|t| t.trim().to_string()) {
            None => return text(StatusCode::FORBIDDEN, "Permission denied"),
            Some(t) if &t != expected => return text(StatusCode::FORBIDDEN, "ACL token not found"),
            Some(_) => {}
        }
    }
    let namespace = query.get("namespace").cloned().unwrap_or_else(|| "default".into());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    // Blocking-query parameters are checked on every read.
    let blocking = if method == Method::GET {
        let index = match query.get("index").map(|i| i.parse::<u64>()) {
            Some(Ok(i)) => i,
            Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "Invalid index"),
            None => 0,
        };
        let wait = match query.get("wait").map(|w| parse_go_duration(w)) {
            Some(Some(w)) => w.min(Duration::from_secs(300)),
            Some(None) => return text(StatusCode::BAD_REQUEST, "Invalid wait time"),
            None => Duration::from_secs(300),
        };
        Some((index, wait))
    } else {
        None
    };
    if let Some((index, wait)) = blocking {
        if index > 0 {
            let mut rx = state.index.subscribe();
            let _ = tokio::time::timeout(wait, rx.wait_for(|i| *i > index)).await;
        }
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    match (segs.as_slice(), &method) {
        (["v1", "jobs"], &Method::PUT | &Method::POST) => register(&state, &namespace, &body),
        (["v1", "jobs"], &Method::GET) => {
            let inner = state.lock();
            let prefix = query.get("prefix").cloned().unwrap_or_default();
            let stubs: Vec<Value> = inner
                .jobs
                .iter()
                .filter(|((ns, id), _)| (namespace == "*" || *ns == namespace) && id.starts_with(&prefix))
                .map(|((ns, id), job)| job_stub(&inner, ns, id, job))
                .collect();
            reply(&Value::Array(stubs), inner.index, true)
        }
        (["v1", "jobs"], _) => text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method"),
        (["v1", "job", id], &Method::GET) => {
            let inner = state.lock();
            match inner.jobs.get(&(namespace.clone(), id.to_string())) {
                Some(job) => reply(&full_job(&inner, &namespace, id, job), inner.index, true),
                None => text(StatusCode::NOT_FOUND, "job not found"),
            }
        }
        (["v1", "job", id], &Method::DELETE) => {
            deregister(&state, &namespace, id, query.get("purge").map(String::as_str)).await
        }
        (["v1", "job", id], &Method::PUT | &Method::POST) => {
            let matches = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["Job"]["ID"].as_str().map(|b| b == *id))
                .unwrap_or(true);
            if !matches {
                return text(StatusCode::BAD_REQUEST, "Job ID does not match name");
            }
            register(&state, &namespace, &body)
        }
        (["v1", "job", _], _) => text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method"),
        (["v1", "job", id, "allocations"], &Method::GET) => {
            let inner = state.lock();
            let allocs: Vec<Value> = inner.allocs_of(&namespace, id).map(alloc_json).collect();
            reply(&Value::Array(allocs), inner.index, true)
        }
        (["v1", "job", id, "summary"], &Method::GET) => {
            let inner = state.lock();
            match inner.jobs.get(&(namespace.clone(), id.to_string())) {
                Some(job) => reply(&summary(&inner, &namespace, id, job), inner.index, true),
                None => text(StatusCode::NOT_FOUND, "job not found"),
            }
        }
        (["v1", "var", rest @ ..], _) if !rest.is_empty() => {
            let key = (namespace.clone(), rest.join("/"));
            let mut inner = state.lock();
            match method {
                Method::PUT => {
                    let Some(items) = serde_json::from_slice::<Value>(&body).ok().map(|v| v["Items"].clone()) else {
                        return text(StatusCode::BAD_REQUEST, "failed to parse request");
                    };
                    if !items.is_object() {
                        return text(StatusCode::BAD_REQUEST, "variable missing required Items object");
                    }
                    inner.variables.insert(key.clone(), items.clone());
                    let index = state.bump(&mut inner);
                    let var = json!({ "Namespace": key.0, "Path": key.1, "Items": items, "ModifyIndex": index });
                    reply(&var, index, false)
                }
                Method::GET => match inner.variables.get(&key) {
                    Some(items) => {
                        reply(&json!({ "Namespace": key.0, "Path": key.1, "Items": items }), inner.index, true)
                    }
                    None => text(StatusCode::NOT_FOUND, "variable not found"),
                },
                Method::DELETE => {
                    inner.variables.remove(&key);
                    let index = state.bump(&mut inner);
                    reply(&Value::Null, index, false)
                }
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method"),
            }
        }
        (["v1", "allocation", id], &Method::GET) => {
            let inner = state.lock();
            match inner.allocs.get(*id) {
                Some(a) => reply(&alloc_json(a), inner.index, true),
                None => text(StatusCode::NOT_FOUND, "alloc not found"),
            }
        }
        _ => Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::new())).unwrap(),
    }
}

fn register(state: &Arc<State>, query_ns: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Some(job) = request.get("Job").filter(|j| !j.is_null()) else {
        return text(StatusCode::BAD_REQUEST, "Job must be specified");
    };
    let Some(id) = job["ID"].as_str().filter(|s| !s.is_empty()).map(str::to_string) else {
        return text(StatusCode::BAD_REQUEST, "Job ID hasn't been provided");
    };
    let namespace =
        [Some(query_ns).filter(|_| query_ns != "default"), request["Namespace"].as_str(), job["Namespace"].as_str()]
            .into_iter()
            .flatten()
            .next()
            .unwrap_or("default")
            .to_string();
    let mut errors = Vec::new();
    if id.contains(' ') || id.contains('\0') {
        errors.push("Job ID contains a space".to_string());
    }
    let groups = job["TaskGroups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        errors.push("Missing job task groups".into());
    }
    let kind = job["Type"].as_str().unwrap_or("service");
    if !["service", "batch", "system", "sysbatch"].contains(&kind) {
        errors.push(format!("Invalid job type: {kind:?}"));
    }
    for g in &groups {
        if g["Tasks"].as_array().is_none_or(|t| t.is_empty()) {
            errors.push(format!(
                "Task group {} validation failed: Missing tasks for task group",
                g["Name"].as_str().unwrap_or("")
            ));
        }
    }
    if !errors.is_empty() {
        let list: String = errors.iter().map(|e| format!("\t* {e}\n")).collect();
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("{} error{} occurred:\n{list}\n", errors.len(), if errors.len() == 1 { "" } else { "s" }),
        );
    }
    let mut inner = state.lock();
    if !inner.namespaces.contains(&namespace) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("job \"{id}\" is in nonexistent namespace \"{namespace}\""),
        );
    }
    let key = (namespace.clone(), id.clone());
    let index = state.bump(&mut inner);
    let spec = job.clone();
    let (changed, job_modify_index) = match inner.jobs.get_mut(&key) {
        // An unchanged spec makes no new version and no new allocations.
        Some(existing) if existing.spec == spec && !existing.stop => (false, existing.job_modify_index),
        Some(existing) => {
            existing.spec = spec;
            existing.stop = false;
            existing.version += 1;
            existing.modify_index = index;
            existing.job_modify_index = index;
            existing.reschedules.clear();
            (true, index)
        }
        None => {
            inner.jobs.insert(
                key.clone(),
                Job {
                    spec,
                    stop: false,
                    version: 0,
                    create_index: index,
                    modify_index: index,
                    job_modify_index: index,
                    submit_time: now_ns(),
                    reschedules: Vec::new(),
                },
            );
            (true, index)
        }
    };
    if changed {
        // A new version replaces the running allocations.
        let old: Vec<String> =
            inner.allocs_of(&namespace, &id).filter(|a| a.desired == "run").map(|a| a.id.clone()).collect();
        for alloc in old {
            stop_alloc(state, &mut inner, &alloc);
        }
        let count = groups.first().and_then(|g| g["Count"].as_u64()).unwrap_or(1);
        for i in 0..count {
            place(state, &mut inner, &namespace, &id, i);
        }
    }
    let eval = uuid::Uuid::new_v4().to_string();
    reply(
        &json!({ "EvalID": eval, "EvalCreateIndex": index, "JobModifyIndex": job_modify_index, "Warnings": "", "Index": index, "LastContact": 0, "KnownLeader": false, "NextToken": "" }),
        index,
        false,
    )
}

async fn deregister(state: &Arc<State>, namespace: &str, id: &str, purge: Option<&str>) -> Response<Full<Bytes>> {
    let purge = match purge {
        None => false,
        Some(v) => match v {
            "true" | "1" | "t" | "T" | "TRUE" | "True" => true,
            "false" | "0" | "f" | "F" | "FALSE" | "False" => false,
            other => return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("Failed to parse value of \"purge\" ({other}) as a bool: strconv.ParseBool: parsing \"{other}\": invalid syntax")),
        },
    };
    let mut inner = state.lock();
    let key = (namespace.to_string(), id.to_string());
    if !inner.jobs.contains_key(&key) {
        return reply(
            &json!({ "EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "VolumeEvalID": "", "VolumeEvalIndex": 0, "Index": 0, "LastContact": 0, "KnownLeader": false, "NextToken": "" }),
            0,
            false,
        );
    }
    let index = state.bump(&mut inner);
    let allocs: Vec<String> =
        inner.allocs_of(namespace, id).filter(|a| a.desired == "run").map(|a| a.id.clone()).collect();
    for alloc in allocs {
        stop_alloc(state, &mut inner, &alloc);
    }
    if purge {
        inner.jobs.remove(&key);
    } else if let Some(job) = inner.jobs.get_mut(&key) {
        job.stop = true;
        job.modify_index = index;
        job.job_modify_index = index;
    }
    let eval = uuid::Uuid::new_v4().to_string();
    reply(
        &json!({ "EvalID": eval, "EvalCreateIndex": index, "JobModifyIndex": index, "VolumeEvalID": "", "VolumeEvalIndex": 0, "Index": index, "LastContact": 0, "KnownLeader": false, "NextToken": "" }),
        index,
        false,
    )
}

fn task_of(inner: &Inner, namespace: &str, job_id: &str) -> Option<(Value, Value)> {
    let job = inner.jobs.get(&(namespace.to_string(), job_id.to_string()))?;
    let group = job.spec["TaskGroups"].get(0)?.clone();
    let task = group["Tasks"].get(0)?.clone();
    Some((group, task))
}

/// A new allocation on the next node, its task started at once.
fn place(state: &Arc<State>, inner: &mut Inner, namespace: &str, job_id: &str, slot: u64) {
    let index = state.bump(inner);
    let mut node = NODES[inner.next_node % NODES.len()];
    inner.next_node += 1;
    if inner.partitioned.contains(&node) {
        node = NODES.iter().copied().find(|n| !inner.partitioned.contains(n)).unwrap_or(node);
    }
    inner.placements += 1;
    let (group_name, task_name) = task_of(inner, namespace, job_id)
        .map(|(g, t)| {
            (g["Name"].as_str().unwrap_or("group").to_string(), t["Name"].as_str().unwrap_or("task").to_string())
        })
        .unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_ns();
    let version = inner.jobs.get(&(namespace.to_string(), job_id.to_string())).map_or(0, |j| j.version);
    inner.by_job.entry((namespace.to_string(), job_id.to_string())).or_default().push(id.clone());
    inner.allocs.insert(
        id.clone(),
        Alloc {
            id: id.clone(),
            namespace: namespace.to_string(),
            job_id: job_id.to_string(),
            name: format!("{job_id}.{group_name}[{slot}]"),
            task: task_name,
            node,
            desired: "run",
            client: "pending",
            task_state: "pending",
            failed: false,
            restarts: 0,
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
            events: vec![json!({ "Type": "Received", "Time": now, "DisplayMessage": "Task received by client", "Details": {}, "ExitCode": 0, "Signal": 0 })],
            create_index: index,
            modify_index: index,
            create_time: now,
            modify_time: now,
            pid: None,
            version,
        },
    );
    tokio::spawn(supervise(Arc::clone(state), id));
}

fn stop_alloc(state: &Arc<State>, inner: &mut Inner, alloc_id: &str) {
    let index = state.bump(inner);
    let kill_timeout = inner
        .allocs
        .get(alloc_id)
        .and_then(|a| task_of(inner, &a.namespace, &a.job_id))
        .and_then(|(_, t)| t["KillTimeout"].as_u64())
        .unwrap_or(5 * NS);
    let cut_off = inner.allocs.get(alloc_id).is_some_and(|a| inner.partitioned.contains(&a.node));
    let Some(a) = inner.allocs.get_mut(alloc_id) else { return };
    a.desired = "stop";
    if cut_off {
        // Its client hears of the stop only when it is back (`heal`).
        a.modify_index = index;
        return;
    }
    a.modify_index = index;
    a.modify_time = now_ns();
    a.events.push(json!({ "Type": "Killing", "Time": now_ns(), "DisplayMessage": "Sent interrupt", "Details": {}, "ExitCode": 0, "Signal": 0 }));
    match a.pid {
        Some(pid) => {
            vap_core::sys::signal(pid, vap_core::sys::SIGTERM);
            // SIGKILL after the kill timeout if it is still there.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_nanos(kill_timeout)).await;
                vap_core::sys::signal(pid, vap_core::sys::SIGKILL);
            });
        }
        None => {
            a.client = "complete";
            a.task_state = "dead";
        }
    }
}

/// Runs one allocation's task under the group's restart policy; on failure, reschedules per
/// the reschedule policy until it is spent (then the job is dead).
async fn supervise(state: Arc<State>, alloc_id: String) {
    let mut attempts: Vec<Instant> = Vec::new();
    loop {
        let (namespace, job_id) = {
            let inner = state.lock();
            let Some(a) = inner.allocs.get(&alloc_id) else { return };
            if a.desired != "run" {
                return;
            }
            (a.namespace.clone(), a.job_id.clone())
        };
        let Some((group, task)) = task_of(&state.lock(), &namespace, &job_id) else { return };
        let command = task["Config"]["command"].as_str().unwrap_or_default().to_string();
        let args: Vec<String> = task["Config"]["args"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let task_dir = state.dir.path().join(&alloc_id);
        let runtime = [
            ("NOMAD_ALLOC_ID", alloc_id.clone()),
            ("NOMAD_JOB_NAME", job_id.clone()),
            ("NOMAD_NAMESPACE", namespace.clone()),
            ("NOMAD_TASK_DIR", task_dir.join("local").display().to_string()),
            ("NOMAD_SECRETS_DIR", task_dir.join("secrets").display().to_string()),
        ];
        let mut cmd = tokio::process::Command::new(&command);
        cmd.args(&args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).current_dir(&task_dir);
        if let Some(env) = task["Env"].as_object() {
            for (k, v) in env {
                // Nomad interpolates its runtime variables in env values.
                let value = runtime.iter().fold(v.as_str().unwrap_or_default().to_string(), |v, (name, value)| {
                    v.replace(&format!("${{{name}}}"), value)
                });
                cmd.env(k, value);
            }
        }
        cmd.envs(runtime.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.stdin(std::process::Stdio::null());
        vap_core::sys::die_with_parent(cmd.as_std_mut(), vap_core::sys::SIGKILL);
        let rendered = render_templates(&state, &namespace, &task, &task_dir);
        let spawned = match rendered {
            Ok(()) => cmd.spawn(),
            Err(e) => Err(std::io::Error::other(e)),
        };
        let mut child = {
            let mut inner = state.lock();
            let index = state.bump(&mut inner);
            let Some(a) = inner.allocs.get_mut(&alloc_id) else { return };
            a.modify_index = index;
            a.modify_time = now_ns();
            match spawned {
                Ok(child) => {
                    a.pid = child.id();
                    // Stopped while it was being started (a new job version): stop it now.
                    if a.desired != "run" {
                        if let Some(pid) = a.pid {
                            vap_core::sys::signal(pid, vap_core::sys::SIGTERM);
                        }
                    }
                    a.client = "running";
                    a.task_state = "running";
                    a.started_at = rfc3339_now();
                    a.events.push(json!({ "Type": "Started", "Time": now_ns(), "DisplayMessage": "Task started by client", "Details": {}, "ExitCode": 0, "Signal": 0 }));
                    child
                }
                Err(e) => {
                    a.events.push(json!({ "Type": "Driver Failure", "Time": now_ns(), "DisplayMessage": e.to_string(), "Details": {}, "ExitCode": 0, "Signal": 0 }));
                    a.client = "failed";
                    a.task_state = "dead";
                    a.failed = true;
                    drop(inner);
                    reschedule(&state, &alloc_id);
                    return;
                }
            }
        };
        let status = child.wait().await;
        let code = status.as_ref().ok().and_then(|s| s.code()).unwrap_or(-1);
        let signal = status.as_ref().ok().and_then(std::os::unix::process::ExitStatusExt::signal).unwrap_or(0);
        let policy = &group["RestartPolicy"];
        let (max_attempts, interval, delay) = (
            policy["Attempts"].as_u64().unwrap_or(2),
            policy["Interval"].as_u64().unwrap_or(1800 * NS),
            policy["Delay"].as_u64().unwrap_or(15 * NS),
        );
        enum Next {
            Done,
            Restart(Duration),
            Reschedule,
        }
        let next = {
            let mut inner = state.lock();
            let index = state.bump(&mut inner);
            let Some(a) = inner.allocs.get_mut(&alloc_id) else { return };
            a.pid = None;
            a.modify_index = index;
            a.modify_time = now_ns();
            a.events.push(json!({ "Type": "Terminated", "Time": now_ns(), "DisplayMessage": format!("Exit Code: {code}"), "Details": {}, "ExitCode": code, "Signal": signal }));
            // Service jobs restart whatever the exit code, within Attempts per Interval.
            let now = Instant::now();
            attempts.retain(|t| now.duration_since(*t) < Duration::from_nanos(interval));
            if a.desired != "run" {
                a.client = "complete";
                a.task_state = "dead";
                a.finished_at = rfc3339_now();
                a.events.push(json!({ "Type": "Killed", "Time": now_ns(), "DisplayMessage": "Task successfully killed", "Details": {}, "ExitCode": 0, "Signal": 0 }));
                Next::Done
            } else if (attempts.len() as u64) < max_attempts {
                attempts.push(now);
                a.restarts += 1;
                a.task_state = "pending";
                a.client = "pending";
                a.events.push(json!({ "Type": "Restarting", "Time": now_ns(), "DisplayMessage": "Restart within policy", "Details": {}, "ExitCode": 0, "Signal": 0 }));
                Next::Restart(Duration::from_nanos(delay))
            } else {
                a.client = "failed";
                a.task_state = "dead";
                a.failed = true;
                a.finished_at = rfc3339_now();
                a.events.push(json!({ "Type": "Not Restarting", "Time": now_ns(), "DisplayMessage": "Exceeded allowed attempts", "Details": {}, "ExitCode": 0, "Signal": 0 }));
                Next::Reschedule
            }
        };
        match next {
            Next::Done => return,
            Next::Restart(delay) => tokio::time::sleep(delay).await,
            Next::Reschedule => {
                reschedule(&state, &alloc_id);
                return;
            }
        }
    }
}

/// A failed allocation gets a successor (on the other node) while the reschedule policy allows.
/// Writes the task's templates into its directory: only the form vap uses,
/// `{{ with nomadVar "path" }}{{ .item }}{{ end }}` (Nomad would block on a missing variable;
/// the double fails the start, which the test then sees).
fn render_templates(
    state: &Arc<State>,
    namespace: &str,
    task: &Value,
    task_dir: &std::path::Path,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for dir in ["local", "secrets"] {
        std::fs::create_dir_all(task_dir.join(dir)).map_err(|e| e.to_string())?;
    }
    for t in task["Templates"].as_array().into_iter().flatten() {
        let body = t["EmbeddedTmpl"].as_str().unwrap_or_default();
        let path = body
            .split_once("nomadVar \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(p, _)| p.to_string())
            .ok_or_else(|| format!("template form not supported by the double: {body}"))?;
        let item = body
            .split_once("{{ .")
            .and_then(|(_, rest)| rest.split_once(" }}"))
            .map(|(i, _)| i.to_string())
            .ok_or_else(|| format!("template form not supported by the double: {body}"))?;
        let value = {
            let inner = state.lock();
            let items = inner
                .variables
                .get(&(namespace.to_string(), path.clone()))
                .ok_or(format!("Missing: nomad.var.block({path})"))?;
            items[&item].as_str().unwrap_or_default().to_string()
        };
        let dest = task_dir.join(t["DestPath"].as_str().unwrap_or("local/template"));
        std::fs::write(&dest, value).map_err(|e| e.to_string())?;
        let mode = u32::from_str_radix(t["Perms"].as_str().unwrap_or("0644"), 8).unwrap_or(0o644);
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn reschedule(state: &Arc<State>, failed_alloc: &str) {
    let mut inner = state.lock();
    let Some(a) = inner.allocs.get(failed_alloc).cloned() else { return };
    let key = (a.namespace.clone(), a.job_id.clone());
    let Some(job) = inner.jobs.get_mut(&key) else { return };
    if job.stop {
        return;
    }
    let policy = job.spec["TaskGroups"][0]["ReschedulePolicy"].clone();
    let attempts = policy["Attempts"].as_u64().unwrap_or(0);
    let interval = Duration::from_nanos(policy["Interval"].as_u64().unwrap_or(3600 * NS));
    let unlimited = policy["Unlimited"].as_bool().unwrap_or(false);
    let now = Instant::now();
    job.reschedules.retain(|t| now.duration_since(*t) < interval);
    if !unlimited && job.reschedules.len() as u64 >= attempts {
        state.bump(&mut inner);
        return;
    }
    job.reschedules.push(now);
    place(state, &mut inner, &key.0, &key.1, 0);
}

fn group_counts(inner: &Inner, namespace: &str, job_id: &str) -> BTreeMap<String, Value> {
    let (mut queued, mut complete, mut failed, mut running, mut starting, mut lost, mut unknown) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for a in inner.allocs_of(namespace, job_id) {
        match (a.desired, a.client) {
            (_, "lost") => lost += 1,
            (_, "unknown") => unknown += 1,
            (_, "complete") => complete += 1,
            (_, "failed") => failed += 1,
            ("run", "pending") => starting += 1,
            (_, "running") | (_, "pending") => running += 1,
            _ => queued += 1,
        }
    }
    let group = task_of(inner, namespace, job_id)
        .map(|(g, _)| g["Name"].as_str().unwrap_or("group").to_string())
        .unwrap_or_else(|| "group".into());
    BTreeMap::from([(
        group,
        json!({ "Queued": queued, "Complete": complete, "Failed": failed, "Running": running, "Starting": starting, "Lost": lost, "Unknown": unknown }),
    )])
}

fn job_status(inner: &Inner, namespace: &str, id: &str, job: &Job) -> &'static str {
    if job.stop {
        return "dead";
    }
    let mut allocs = inner.allocs_of(namespace, id).peekable();
    if allocs.peek().is_none() {
        return "pending";
    }
    if allocs.any(|a| a.desired == "run" && matches!(a.client, "pending" | "running" | "unknown")) {
        "running"
    } else {
        "dead"
    }
}

fn summary(inner: &Inner, namespace: &str, id: &str, job: &Job) -> Value {
    let summary = group_counts(inner, namespace, id);
    json!({ "JobID": id, "Namespace": namespace, "Summary": summary, "Children": { "Pending": 0, "Running": 0, "Dead": 0 }, "CreateIndex": job.create_index, "ModifyIndex": inner.index })
}

fn job_stub(inner: &Inner, namespace: &str, id: &str, job: &Job) -> Value {
    let s = &job.spec;
    json!({
        "ID": id, "ParentID": "", "Name": s["Name"].as_str().unwrap_or(id), "Namespace": namespace,
        "Datacenters": s.get("Datacenters").cloned().unwrap_or(json!(["*"])), "NodePool": "default",
        "Type": s["Type"].as_str().unwrap_or("service"), "Priority": s["Priority"].as_u64().unwrap_or(50),
        "Periodic": false, "ParameterizedJob": false, "Stop": job.stop,
        "Status": job_status(inner, namespace, id, job), "StatusDescription": "",
        "JobSummary": summary(inner, namespace, id, job),
        "CreateIndex": job.create_index, "ModifyIndex": job.modify_index, "JobModifyIndex": job.job_modify_index, "SubmitTime": job.submit_time
    })
}

/// The job as Nomad returns it: the submitted spec with server-side defaults filled in.
fn full_job(inner: &Inner, namespace: &str, id: &str, job: &Job) -> Value {
    let mut v = job.spec.clone();
    let defaults = [
        ("Region", json!("global")),
        ("Namespace", json!(namespace)),
        ("Name", json!(id)),
        ("Type", json!("service")),
        ("Priority", json!(50)),
        ("Datacenters", json!(["*"])),
        ("NodePool", json!("default")),
        ("ParentID", json!("")),
        ("Meta", Value::Null),
        ("Periodic", Value::Null),
        ("ParameterizedJob", Value::Null),
        ("Payload", Value::Null),
        ("Dispatched", json!(false)),
        ("Stable", json!(false)),
        ("StatusDescription", json!("")),
    ];
    for (k, d) in defaults {
        if v.get(k).is_none() {
            v[k] = d;
        }
    }
    v["Stop"] = json!(job.stop);
    v["Status"] = json!(job_status(inner, namespace, id, job));
    v["Version"] = json!(job.version);
    v["SubmitTime"] = json!(job.submit_time);
    v["CreateIndex"] = json!(job.create_index);
    v["ModifyIndex"] = json!(job.modify_index);
    v["JobModifyIndex"] = json!(job.job_modify_index);
    v
}

fn alloc_json(a: &Alloc) -> Value {
    json!({
        "ID": a.id, "EvalID": "", "Name": a.name, "Namespace": a.namespace,
        "NodeID": format!("{:08x}-0000-4000-8000-000000000000", a.node.len()), "NodeName": a.node,
        "JobID": a.job_id, "JobType": "service", "JobVersion": a.version, "TaskGroup": a.name.rsplit_once('.').map(|(_, g)| g.split('[').next().unwrap_or("")).unwrap_or(""),
        "DesiredStatus": a.desired, "DesiredDescription": "",
        "ClientStatus": a.client, "ClientDescription": "",
        "DesiredTransition": { "Migrate": null, "Reschedule": null, "ForceReschedule": null, "NoShutdownDelay": null },
        "TaskStates": { a.task.clone(): {
            "State": a.task_state, "Failed": a.failed, "Restarts": a.restarts,
            "LastRestart": ZERO_TIME, "StartedAt": a.started_at, "FinishedAt": a.finished_at, "Events": a.events
        }},
        "DeploymentStatus": null, "FollowupEvalID": "", "NextAllocation": "", "RescheduleTracker": null,
        "PreemptedAllocations": null, "PreemptedByAllocation": "",
        "CreateIndex": a.create_index, "ModifyIndex": a.modify_index, "CreateTime": a.create_time, "ModifyTime": a.modify_time
    })
}
