//! The one place HTTP status codes are chosen. Error bodies are JSON, short, and never echo a
//! request's content, a token or a signature.

use crate::ingest::BodyError;
use crate::signature::SignatureError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

/// Why a callback request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("unsupported content type: expected {expected}")]
    UnsupportedMediaType { expected: &'static str },
    #[error("request body over the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body could not be read: {0}")]
    Unreadable(String),
    #[error("request body not received within {seconds:.1}s")]
    BodyTimeout { seconds: f64 },
    #[error("{0}")]
    Undecodable(#[from] BodyError),
    #[error("signature rejected: {}", .0.reason())]
    Signature(SignatureError),
    #[error("cannot make the callback durable right now: {0}")]
    Unavailable(String),
    /// Start-up recovery's backlog is full; retry after the given seconds.
    #[error("{message}")]
    Recovering { message: String, retry_after: u64 },
}

impl From<crate::intake::AdmitError> for CallbackError {
    fn from(e: crate::intake::AdmitError) -> CallbackError {
        match e {
            crate::intake::AdmitError::Unavailable(m) => CallbackError::Unavailable(m),
            crate::intake::AdmitError::Recovering {
                message,
                retry_after,
            } => CallbackError::Recovering {
                message,
                retry_after,
            },
        }
    }
}

impl ResponseError for CallbackError {
    fn status_code(&self) -> StatusCode {
        match self {
            CallbackError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CallbackError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            CallbackError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            CallbackError::Undecodable(BodyError::TooManyEvents { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            CallbackError::Unreadable(_) | CallbackError::Undecodable(_) => StatusCode::BAD_REQUEST,
            CallbackError::Signature(_) => StatusCode::FORBIDDEN,
            CallbackError::Unavailable(_) | CallbackError::Recovering { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = json_error(self.status_code(), &self.to_string());
        if let CallbackError::Recovering { retry_after, .. } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(*retry_after));
        }
        resp
    }
}

/// Why a request was turned away before its handler ran (routes/guard.rs).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("callbacks are not accepted from this source network")]
    SourceNotAllowed,
    #[error("too many callbacks in flight; retry shortly")]
    Overloaded,
    #[error("no such route")]
    NotOnThisListener,
    #[error("method not allowed: use {allow}")]
    MethodNotAllowed { allow: &'static str },
}

impl ResponseError for GateError {
    fn status_code(&self) -> StatusCode {
        match self {
            GateError::SourceNotAllowed => StatusCode::FORBIDDEN,
            GateError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            GateError::NotOnThisListener => StatusCode::NOT_FOUND,
            GateError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = json_error(self.status_code(), &self.to_string());
        let headers = resp.headers_mut();
        match self {
            // Event Streams backs off on 429 by itself; one second is a floor, not a promise.
            GateError::Overloaded => {
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            GateError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

/// Why a query API request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("the query API answers loopback clients only until api.credentials is set")]
    LoopbackOnly,
    /// A fixed text: it never names what was asked for.
    #[error("{0}")]
    NotFound(&'static str),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::LoopbackOnly => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = json_error(self.status_code(), &self.to_string());
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"tally\""),
            );
        }
        resp
    }
}

/// A JSON error body shaped like Twilio's: `{"code", "message", "status"}`.
pub fn json_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({
        "code": status.as_u16(),
        "message": message,
        "status": status.as_u16(),
    }))
}
