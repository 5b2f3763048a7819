//! Who may ask: a `Host` allow-list against DNS rebinding, and, on an API without tokens, no
//! state-changing request from another site's page (a plain cross-site form could otherwise
//! stop a camera).

use hyper::{header, Method, Request};

use super::ApiError;
use vap_core::config::ApiSettings;

/// Refuses a request whose `Host` names a host the API was not told it is (an address typed as
/// such is always fine: rebinding needs a name), or, with no token set, a state-changing
/// request another site's page sent.
pub fn check<B>(settings: &ApiSettings, req: &Request<B>) -> Result<(), ApiError> {
    let host =
        req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or(req.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host {
        if !host_allowed(&settings.allowed_hosts, host) {
            return Err(ApiError::HostNotAllowed(hostname(host).to_string()));
        }
    }
    let open = settings.auth_token.is_empty() && settings.read_token.is_empty();
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if open && !reads && from_another_site(req, host) {
        return Err(ApiError::CrossOrigin);
    }
    Ok(())
}

/// `host` without its port (and an IPv6 literal without its brackets).
fn hostname(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

fn host_allowed(allowed: &[String], host: &str) -> bool {
    let name = hostname(host).trim_end_matches('.');
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(name))
}

fn from_another_site<B>(req: &Request<B>, host: Option<&str>) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site").is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return true;
    }
    match header("origin") {
        None => false,
        // A sandboxed page or a redirect chain: no site to trust.
        Some("null") => true,
        Some(origin) => {
            let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            host.is_none_or(|h| !authority.eq_ignore_ascii_case(h))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, host: &str, origin: Option<&str>) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/api/v1/scenario/init").header(header::HOST, host);
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn names_not_listed_are_refused_and_addresses_and_localhost_pass() {
        let s = ApiSettings { allowed_hosts: vec!["vap.example.org".into()], ..ApiSettings::default() };
        for ok in ["127.0.0.1:8080", "[::1]:8080", "10.1.2.3", "localhost:8080", "app.localhost", "VAP.example.org:443"]
        {
            assert!(check(&s, &request(Method::GET, ok, None)).is_ok(), "{ok}");
        }
        let refused = check(&s, &request(Method::GET, "evil.example:8080", None)).unwrap_err();
        assert!(matches!(refused, ApiError::HostNotAllowed(ref h) if h == "evil.example"), "{refused:?}");
        let any = ApiSettings { allowed_hosts: vec!["*".into()], ..ApiSettings::default() };
        assert!(check(&any, &request(Method::GET, "evil.example", None)).is_ok());
    }

    #[test]
    fn without_tokens_only_same_origin_pages_may_change_state() {
        let s = ApiSettings::default();
        let post = |origin| check(&s, &request(Method::POST, "127.0.0.1:8080", origin));
        assert!(post(None).is_ok(), "curl sends no Origin");
        assert!(post(Some("http://127.0.0.1:8080")).is_ok());
        assert!(matches!(post(Some("http://attacker.example")), Err(ApiError::CrossOrigin)));
        assert!(matches!(post(Some("null")), Err(ApiError::CrossOrigin)));
        assert!(check(&s, &request(Method::GET, "127.0.0.1:8080", Some("http://attacker.example"))).is_ok());
        let with_token = ApiSettings { auth_token: vap_core::config::Secret::new("t"), ..ApiSettings::default() };
        assert!(check(&with_token, &request(Method::POST, "127.0.0.1:8080", Some("http://attacker.example"))).is_ok());
    }
}
