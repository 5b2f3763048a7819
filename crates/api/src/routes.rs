//! The route table: every route of the API once, with the methods it answers and who may call
//! it. Requests are matched against it (`matchit`, with the templates as the OpenAPI document
//! writes them), metrics are labelled by its templates, and a unit test holds the shipped
//! document against it, both ways.

use std::sync::OnceLock;

use hyper::Method;

/// What a route does; `dispatch` calls its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Console,
    ConsoleAsset,
    Health,
    Ready,
    Metrics,
    OpenApi,
    Docs,
    InitScenario,
    ListScenarios,
    Models,
    Scenario,
    Shutdown,
    Events,
    Counts,
    EventStream,
    SnapshotInfo,
    Snapshot,
    EventSnapshot,
    Prediction,
    PredictionStream,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Probes carry no token; the documentation and the console's files hold no data (the
    /// console asks for a token itself).
    Open,
    /// Open unless `api.metrics_public = false`.
    Metrics,
    /// A token: reading for GET and HEAD, operating for anything else.
    Token,
}

pub(crate) struct Route {
    /// As the OpenAPI document writes it; also the metrics label.
    pub template: &'static str,
    pub endpoint: Endpoint,
    /// The methods it answers, as the `Allow` header lists them (HEAD wherever GET).
    pub allow: &'static str,
    pub access: Access,
}

const fn route(template: &'static str, endpoint: Endpoint, allow: &'static str, access: Access) -> Route {
    Route { template, endpoint, allow, access }
}

const GET: &str = "GET, HEAD";

pub(crate) const ROUTES: [Route; 20] = [
    route("/", Endpoint::Console, GET, Access::Open),
    route("/console/{asset}", Endpoint::ConsoleAsset, GET, Access::Open),
    route("/health", Endpoint::Health, GET, Access::Open),
    route("/ready", Endpoint::Ready, GET, Access::Open),
    route("/metrics", Endpoint::Metrics, GET, Access::Metrics),
    route("/openapi.json", Endpoint::OpenApi, GET, Access::Open),
    route("/docs", Endpoint::Docs, GET, Access::Open),
    route("/api/v1/scenario/init", Endpoint::InitScenario, "POST", Access::Token),
    route("/api/v1/scenarios", Endpoint::ListScenarios, GET, Access::Token),
    route("/api/v1/models", Endpoint::Models, GET, Access::Token),
    route("/api/v1/scenario/{uuid}", Endpoint::Scenario, "GET, HEAD, PATCH, DELETE", Access::Token),
    route("/api/v1/scenario/{uuid}/shutdown", Endpoint::Shutdown, "POST", Access::Token),
    route("/api/v1/scenario/{uuid}/events", Endpoint::Events, GET, Access::Token),
    route("/api/v1/scenario/{uuid}/counts", Endpoint::Counts, GET, Access::Token),
    route("/api/v1/scenario/{uuid}/events/stream", Endpoint::EventStream, GET, Access::Token),
    route("/api/v1/scenario/{uuid}/snapshot", Endpoint::SnapshotInfo, GET, Access::Token),
    route("/api/v1/scenario/{uuid}/snapshot.jpg", Endpoint::Snapshot, GET, Access::Token),
    route("/api/v1/scenario/{uuid}/events/{event_id}/snapshot.jpg", Endpoint::EventSnapshot, GET, Access::Token),
    route("/api/v1/prediction/{uuid}", Endpoint::Prediction, GET, Access::Token),
    route("/api/v1/prediction/{uuid}/stream", Endpoint::PredictionStream, GET, Access::Token),
];

/// A request's route and the values of its template's parameters.
pub(crate) struct Matched {
    pub route: &'static Route,
    params: Vec<(String, String)>,
}

impl Matched {
    /// A parameter the template names (empty for one it does not).
    pub fn param(&self, name: &str) -> &str {
        self.params.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v)
    }
}

fn router() -> &'static matchit::Router<usize> {
    static ROUTER: OnceLock<matchit::Router<usize>> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let mut router = matchit::Router::new();
        for (i, r) in ROUTES.iter().enumerate() {
            router.insert(r.template, i).expect("the route table's templates do not overlap (a unit test)");
        }
        router
    })
}

/// The route of `path` (a trailing slash is the same path).
pub(crate) fn find(path: &str) -> Option<Matched> {
    let trimmed = path.trim_end_matches('/');
    let m = router().at(if trimmed.is_empty() { "/" } else { trimmed }).ok()?;
    let params = m.params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Some(Matched { route: &ROUTES[*m.value], params })
}

impl Route {
    pub fn answers(&self, method: &Method) -> bool {
        self.allow.split(", ").any(|m| m == method.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn paths_find_their_routes_and_parameters() {
        let m = find("/api/v1/scenario/abc/events/def/snapshot.jpg").unwrap();
        assert_eq!((m.route.endpoint, m.param("uuid"), m.param("event_id")), (Endpoint::EventSnapshot, "abc", "def"));
        assert_eq!(find("/api/v1/scenario/init").unwrap().route.endpoint, Endpoint::InitScenario);
        assert_eq!(find("/api/v1/scenario/init/").unwrap().route.endpoint, Endpoint::InitScenario);
        assert_eq!(find("/api/v1/scenario/x").unwrap().route.endpoint, Endpoint::Scenario);
        assert_eq!(find("/").unwrap().route.endpoint, Endpoint::Console);
        assert!(find("/api/v1/scenario/x/nothing").is_none());
        assert!(find("/api/v2/scenarios").is_none());
        // An empty segment names no scenario: not found (no route has an empty parameter).
        assert!(find("/api/v1/scenario//shutdown").is_none());
        let scenario = find("/api/v1/scenario/x").unwrap().route;
        assert!(
            scenario.answers(&Method::DELETE) && scenario.answers(&Method::HEAD) && !scenario.answers(&Method::PUT)
        );
    }

    /// Every route and method is in the shipped OpenAPI document, and the document has nothing
    /// else.
    #[test]
    fn the_document_describes_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let documented: BTreeSet<String> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object().unwrap().keys().filter(|k| *k != "parameters").map(move |m| format!("{m} {path}"))
            })
            .collect();
        let served: BTreeSet<String> = ROUTES
            .iter()
            .flat_map(|r| {
                r.allow
                    .split(", ")
                    .filter(|m| *m != "HEAD")
                    .map(move |m| format!("{} {}", m.to_lowercase(), r.template))
            })
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(undocumented.is_empty() && unserved.is_empty(), "undocumented {undocumented:?}, unserved {unserved:?}");
        assert_eq!(served.len(), 22);
    }
}
