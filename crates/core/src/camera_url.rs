//! Camera URLs: what the API accepts, and how they are shown without credentials. A
//! [`CameraUrl`] is parsed once; its `Debug` and `Display` redact, and only
//! [`CameraUrl::expose`] hands out the string with its credentials (to the runner).

use std::fmt;

use url::{Host, Url};

use crate::destination::{DestinationError, DestinationPolicy};

pub const MAX_CAMERA_URL_BYTES: usize = 2048;
const NETWORK_SCHEMES: &[&str] = &["rtsp", "rtsps", "http", "https"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CameraUrlError {
    #[error("camera_url is empty")]
    Empty,
    #[error("camera_url is {0} bytes; the limit is {MAX_CAMERA_URL_BYTES}")]
    TooLong(usize),
    #[error("camera_url does not parse as a URL: {0}")]
    Unparsable(String),
    #[error("camera_url scheme '{0}' is not allowed; use rtsp, rtsps, http or https")]
    SchemeNotAllowed(String),
    #[error("camera_url is a local file, and this server does not accept local files")]
    FilesDisabled,
    #[error("camera_url has no host")]
    NoHost,
    #[error("camera_url holds a control character (U+{0:04X}) at byte {1}; percent-encode it")]
    ControlCharacter(u32, usize),
    #[error("camera_url holds a backslash at byte {0}; URLs use '/'")]
    Backslash(usize),
    #[error("camera_url's host: {0}")]
    Destination(#[from] DestinationError),
}

/// Query parameters whose values are secrets: shown as `***`, like a URL's user and password.
pub const SECRET_QUERY_PARAMS: &[&str] =
    &["password", "pass", "passwd", "pwd", "token", "key", "apikey", "api_key", "auth", "signature", "sig", "secret"];

static EXTRA_SECRET_QUERY_PARAMS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The operator's names of secret query parameters (`log.secret_query_params`), added to
/// [`SECRET_QUERY_PARAMS`] for this process; set once, at start, before anything is shown.
pub fn add_secret_query_params(names: &[String]) {
    let _ =
        EXTRA_SECRET_QUERY_PARAMS.set(names.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect());
}

/// A camera URL that passed [`CameraUrl::parse`] (or was stored after it did). On the wire
/// (`init_scenario`) it is the plain string: the runner needs its credentials.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct CameraUrl(String);

impl CameraUrl {
    /// A local file (an absolute path or `file:`): media with an end, read the same way every
    /// time, so its frames are numbered by media time (a run again repeats their numbers).
    pub fn is_local_file(&self) -> bool {
        self.0.starts_with('/') || self.0.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("file:"))
    }

    /// Checks a camera URL. Local files (`file://` or an absolute path) pass only when
    /// `allow_files` is set; an absolute path is kept as it was given. A host that is an
    /// address (or `localhost`) must pass `policy`; names are checked by the runner.
    pub fn parse(raw: &str, allow_files: bool, policy: &DestinationPolicy) -> Result<Self, CameraUrlError> {
        if raw.trim().is_empty() {
            return Err(CameraUrlError::Empty);
        }
        if raw.len() > MAX_CAMERA_URL_BYTES {
            return Err(CameraUrlError::TooLong(raw.len()));
        }
        // CR/LF would reach FFmpeg's requests, NUL can't be stored, and URL parsers disagree on
        // what a backslash means: refused, not cleaned up behind the user's back.
        if let Some((at, c)) = raw.char_indices().find(|(_, c)| c.is_control()) {
            return Err(CameraUrlError::ControlCharacter(c as u32, at));
        }
        if let Some(at) = raw.find('\\') {
            return Err(CameraUrlError::Backslash(at));
        }
        if raw.starts_with('/') {
            return if allow_files { Ok(Self(raw.to_string())) } else { Err(CameraUrlError::FilesDisabled) };
        }
        let url = Url::parse(raw).map_err(|e| CameraUrlError::Unparsable(e.to_string()))?;
        match url.scheme() {
            "file" if allow_files => Ok(Self(raw.to_string())),
            "file" => Err(CameraUrlError::FilesDisabled),
            s if NETWORK_SCHEMES.contains(&s) => {
                match url.host() {
                    None => return Err(CameraUrlError::NoHost),
                    Some(Host::Domain("")) => return Err(CameraUrlError::NoHost),
                    Some(Host::Domain(name)) => policy.check_host(name)?,
                    Some(Host::Ipv4(a)) => policy.check_ip(a.into())?,
                    Some(Host::Ipv6(a)) => policy.check_ip(a.into())?,
                }
                // The runner opens the URL as the parser understood it, not the raw text; that
                // form (percent-encoded) can be longer, and is what is stored (found by fuzzing).
                let normalised = url.to_string();
                if normalised.len() > MAX_CAMERA_URL_BYTES {
                    return Err(CameraUrlError::TooLong(normalised.len()));
                }
                Ok(Self(normalised))
            }
            other => Err(CameraUrlError::SchemeNotAllowed(other.to_string())),
        }
    }

    /// A URL vap stored or was handed after it was parsed (database rows, a runner's job).
    pub fn trusted(raw: String) -> Self {
        Self(raw)
    }

    /// The URL with its credentials: only for what opens the stream or carries it there.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with user, password and secret query values replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0, EXTRA_SECRET_QUERY_PARAMS.get().map_or(&[], Vec::as_slice))
    }
}

impl fmt::Debug for CameraUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CameraUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for CameraUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The URL with user and password replaced by `***`, for answers and logs.
/// Input that does not parse is returned unchanged only if it cannot hold credentials.
/// A webhook receiver's URL as readers see it: user-info and every query value hidden, since a
/// receiver's query is where its secret usually rides (the scheme, host and path stay, to tell
/// receivers apart).
pub fn redact_webhook_url(raw: &str) -> String {
    let mut names: Vec<String> =
        Url::parse(raw).map(|u| u.query_pairs().map(|(k, _)| k.into_owned()).collect()).unwrap_or_default();
    names.extend(EXTRA_SECRET_QUERY_PARAMS.get().into_iter().flatten().cloned());
    redact(raw, &names)
}

fn redact(raw: &str, extra: &[String]) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            if !url.username().is_empty() {
                let _ = url.set_username("***");
            }
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            let secret = |k: &str| {
                SECRET_QUERY_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s))
                    || extra.iter().any(|s| k.eq_ignore_ascii_case(s))
            };
            if url.query_pairs().any(|(k, _)| secret(&k)) {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) { "***".to_string() } else { v.into_owned() };
                        (k.into_owned(), v)
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        // A string with '@' that does not parse could still carry a secret: hide the part before it.
        Err(_) => match raw.rfind('@') {
            Some(at) => format!("***{}", &raw[at..]),
            None => raw.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(raw: &str, allow_files: bool) -> Result<(), CameraUrlError> {
        CameraUrl::parse(raw, allow_files, &DestinationPolicy::default()).map(|_| ())
    }

    #[test]
    fn hosts_the_policy_refuses_are_refused_in_every_spelling() {
        for raw in [
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/latest/meta-data/",
            "rtsp://169.254.43518/x",
            "rtsp://user:pw@127.0.0.1:554/a",
            "rtsp://0x7f.1/a",
            "http://[::ffff:127.0.0.1]/a",
            "rtsps://localhost/a",
            "http://[fe80::1]/a",
            "rtsp://0.0.0.0/a",
        ] {
            let err = validate(raw, false).unwrap_err();
            assert!(matches!(err, CameraUrlError::Destination(DestinationError::Refused { .. })), "{raw}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        assert_eq!(validate("rtsp://192.168.1.64:554/live", false), Ok(()));
        let allowed = DestinationPolicy::from_settings(&crate::destination::DestinationSettings {
            allow: vec!["127.0.0.1".into()],
            deny: vec![],
        })
        .unwrap();
        assert!(CameraUrl::parse("rtsp://127.0.0.1:8554/a", false, &allowed).is_ok());
        assert!(CameraUrl::parse("rtsp://127.0.0.2:8554/a", false, &allowed).is_err());
    }

    #[test]
    fn accepts_network_schemes_and_rejects_others() {
        assert_eq!(validate("rtsp://cam.local:554/stream", false), Ok(()));
        assert_eq!(validate("https://example.com/a.mp4", false), Ok(()));
        assert_eq!(validate("ftp://x/y", false), Err(CameraUrlError::SchemeNotAllowed("ftp".into())));
        assert_eq!(validate("file:///v.mp4", false), Err(CameraUrlError::FilesDisabled));
        assert_eq!(validate("/v.mp4", false), Err(CameraUrlError::FilesDisabled));
        assert_eq!(validate("/v.mp4", true), Ok(()));
        assert!(matches!(validate("not a url", false), Err(CameraUrlError::Unparsable(_))));
        assert!(matches!(validate(&format!("rtsp://h/{}", "a".repeat(2100)), false), Err(CameraUrlError::TooLong(_))));
        // Short as sent, too long once percent-encoded (the stored form): fuzzing found it.
        assert_eq!(validate(&format!("rtsp://h/{}x", " ".repeat(700)), false), Err(CameraUrlError::TooLong(2110)));
    }

    #[test]
    fn operator_named_query_parameters_are_secret_too() {
        let extra = vec!["SessionId".to_string()];
        assert_eq!(redact("rtsp://cam/live?sessionid=s1&channel=2", &extra), "rtsp://cam/live?sessionid=***&channel=2");
        assert_eq!(redact("rtsp://cam/live?sessionid=s1", &[]), "rtsp://cam/live?sessionid=s1");
    }

    #[test]
    fn webhook_urls_hide_user_info_and_every_query_value() {
        assert_eq!(redact_webhook_url("http://host/h?token=SECRET&x=1"), "http://host/h?token=***&x=***");
        assert_eq!(redact_webhook_url("https://u:p@host:8443/hook"), "https://***:***@host:8443/hook");
        assert_eq!(redact_webhook_url("https://host/hook"), "https://host/hook");
    }

    #[test]
    fn redacts_user_and_password() {
        assert_eq!(redact("rtsp://admin:hunter2@10.0.0.5:554/live", &[]), "rtsp://***:***@10.0.0.5:554/live");
        assert_eq!(redact("rtsp://token@cam/live", &[]), "rtsp://***@cam/live");
        assert_eq!(redact("rtsp://cam/live", &[]), "rtsp://cam/live");
        assert!(!redact("bad url user:pw@x", &[]).contains("pw"));
        assert_eq!(
            redact("rtsp://admin:S3cret@cam/live?password=Q9x&token=abc&channel=2", &[]),
            "rtsp://***:***@cam/live?password=***&token=***&channel=2"
        );
        assert_eq!(redact("http://cam/snap?Key=k1&PWD=p", &[]), "http://cam/snap?Key=***&PWD=***");
    }

    #[test]
    fn control_characters_and_backslashes_are_refused_and_the_url_is_kept_as_parsed() {
        assert_eq!(validate("rtsp://h/a\0b", false), Err(CameraUrlError::ControlCharacter(0, 10)));
        assert_eq!(validate("rtsp://h:6379/a\r\nSET x y\r\n", false), Err(CameraUrlError::ControlCharacter(13, 15)));
        assert_eq!(validate("rtsp://h/a\tb", false), Err(CameraUrlError::ControlCharacter(9, 10)));
        assert_eq!(validate("rtsp://h\\a/b", false), Err(CameraUrlError::Backslash(8)));
        assert_eq!(validate("/srv/a\nb.mp4", true), Err(CameraUrlError::ControlCharacter(10, 6)));
        let parsed = CameraUrl::parse("RTSP://Cam.Example:554/a b", false, &DestinationPolicy::default()).unwrap();
        // rtsp is not a special scheme to the URL standard: its host keeps its case.
        assert_eq!(parsed.expose(), "rtsp://Cam.Example:554/a%20b");
    }

    #[test]
    fn debug_and_display_redact_and_expose_does_not() {
        let url = CameraUrl::parse("rtsp://admin:hunter2@cam/live", false, &DestinationPolicy::default()).unwrap();
        assert_eq!(url.to_string(), "rtsp://***:***@cam/live");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.expose(), "rtsp://admin:hunter2@cam/live");
    }
}
