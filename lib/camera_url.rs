//! Camera URLs: what the API accepts, and how they are shown without credentials.

use url::Url;

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
}

/// Checks a camera URL. Local files (`file://` or an absolute path) pass only when
/// `allow_files` is set; an absolute path is returned as it was given.
pub fn validate(raw: &str, allow_files: bool) -> Result<(), CameraUrlError> {
    if raw.trim().is_empty() {
        return Err(CameraUrlError::Empty);
    }
    if raw.len() > MAX_CAMERA_URL_BYTES {
        return Err(CameraUrlError::TooLong(raw.len()));
    }
    if raw.starts_with('/') {
        return if allow_files { Ok(()) } else { Err(CameraUrlError::FilesDisabled) };
    }
    let url = Url::parse(raw).map_err(|e| CameraUrlError::Unparsable(e.to_string()))?;
    match url.scheme() {
        "file" if allow_files => Ok(()),
        "file" => Err(CameraUrlError::FilesDisabled),
        s if NETWORK_SCHEMES.contains(&s) => {
            if url.host_str().is_none_or(str::is_empty) {
                Err(CameraUrlError::NoHost)
            } else {
                Ok(())
            }
        }
        other => Err(CameraUrlError::SchemeNotAllowed(other.to_string())),
    }
}

/// The URL with user and password replaced by `***`, for answers and logs.
/// Input that does not parse is returned unchanged only if it cannot hold credentials.
pub fn redact(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            if !url.username().is_empty() {
                let _ = url.set_username("***");
            }
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
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
    }

    #[test]
    fn redacts_user_and_password() {
        assert_eq!(redact("rtsp://admin:hunter2@10.0.0.5:554/live"), "rtsp://***:***@10.0.0.5:554/live");
        assert_eq!(redact("rtsp://token@cam/live"), "rtsp://***@cam/live");
        assert_eq!(redact("rtsp://cam/live"), "rtsp://cam/live");
        assert!(!redact("bad url user:pw@x").contains("pw"));
    }
}
