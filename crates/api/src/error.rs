//! API errors: every one is a JSON body `{"error": {"code", "message"}}` with a 4xx/5xx status;
//! a bad scenario option adds `"field"`.

use hyper::{header, Response, StatusCode};

use super::Body;
use vap_core::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// A scenario option: the body names the field too.
    #[error("{0}")]
    InvalidOption(vap_core::options::OptionError),
    #[error("authentication required: send 'Authorization: Bearer <token>'")]
    Unauthorized,
    #[error("this token may only read; {0} needs an operate token (api.auth_token)")]
    Forbidden(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("scenario {0} not found")]
    ScenarioNotFound(uuid::Uuid),
    #[error("method {method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed { method: String, allowed: &'static str },
    #[error("{0}")]
    Conflict(String),
    /// A scenario or event with no snapshot (yet).
    #[error("{0}")]
    NoSnapshot(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("request body not received within {0} ms")]
    BodyTimeout(u64),
    #[error("this server already streams to {0} clients; retry later")]
    TooManyStreams(usize),
    #[error("content type must be application/json, got {0}")]
    UnsupportedMediaType(String),
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("host '{0}' is not one this API serves (api.allowed_hosts)")]
    HostNotAllowed(String),
    #[error("a page of another site may not change state here: send no Origin, or set an API token")]
    CrossOrigin,
    #[error("{0}")]
    Unprocessable(String),
    #[error("busy drawing {0}; retry shortly")]
    Busy(&'static str),
    #[error("database unavailable, retry later")]
    Unavailable,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest { code, message: message.into() }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::InvalidOption(_) => (StatusCode::BAD_REQUEST, "invalid_option"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::ScenarioNotFound(_) => (StatusCode::NOT_FOUND, "scenario_not_found"),
            ApiError::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::NoSnapshot(_) => (StatusCode::NOT_FOUND, "no_snapshot"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::TooManyStreams(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_streams"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            ApiError::HostNotAllowed(_) => (StatusCode::MISDIRECTED_REQUEST, "host_not_allowed"),
            ApiError::CrossOrigin => (StatusCode::FORBIDDEN, "cross_origin"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "snapshot_too_large"),
            ApiError::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, "busy"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let message = match &self {
            // Details of internal failures go to the log, not to the client.
            ApiError::Internal(detail) => {
                tracing::error!(detail, "internal error");
                self.to_string()
            }
            _ => self.to_string(),
        };
        let mut body = serde_json::json!({ "error": { "code": code, "message": message } });
        if let ApiError::InvalidOption(e) = &self {
            body["error"]["field"] = e.field.clone().into();
        }
        let mut resp = super::json_response(status, &body);
        match self {
            ApiError::MethodNotAllowed { allowed, .. } => {
                resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allowed));
            }
            ApiError::Unauthorized => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyStreams(_) => {
                resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            }
            ApiError::Busy(_) => {
                resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            ApiError::BodyTimeout(_) => {
                resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::Unavailable
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}
