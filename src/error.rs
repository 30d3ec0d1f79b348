//! The error policy, in one place.
//!
//! - Every error a user can cause is a 4xx whose message names the problem (for a bad
//!   field: the field). The body is always JSON: `{"error": "…", "code": "…"}`, plus
//!   `"field"` for 422.
//! - A fault of ours (a database error, a task that died) is a 500 whose body says only that
//!   something failed; the cause goes to the log, never to the client.
//! - An unavailable dependency (database down, pool exhausted) is a 503.
//! - Messages never contain secrets: the types that carry secrets do not print them.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::domain::FieldError;
use crate::store::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or not the JSON expected.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or not a valid one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: refused whoever asks (without tokens: a foreign `Host` or `Origin`).
    #[error("{0}")]
    Forbidden(String),
    /// 404: the id names nothing.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("{message}")]
    MethodNotAllowed {
        /// What was asked.
        message: String,
        /// The methods the path takes, sent as `Allow`.
        allow: String,
    },
    /// 409: the change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: a body that is not said to be JSON (`Content-Type: application/json`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: a field is invalid.
    #[error("{0}")]
    Invalid(FieldError),
    /// 429: a rate or count limit was reached; try again after `retry_after_secs`.
    #[error("{message}")]
    TooManyRequests {
        /// What limit, and when to come back.
        message: String,
        /// Sent as `Retry-After`.
        retry_after_secs: u64,
    },
    /// 503: the database (or queue) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// 500: our fault; the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

/// The body of every error response: `{"error", "code"}`, plus `"field"` for a 422.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "job 0195f2a4-3b7c-7d8e-9f00-112233445566 does not exist", "code": "not_found"}))]
pub struct ErrorBody {
    /// What went wrong, in a sentence (for a 422 it names the field). Never contains secrets.
    pub error: String,
    /// Machine-readable: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `conflict`, `payload_too_large`, `unsupported_media_type`,
    /// `invalid_field`, `too_many_requests`, `unavailable` or `internal`.
    #[schema(value_type = String, example = "not_found")]
    pub code: &'static str,
    /// The offending field of a 422 (`invalid_field`), as the API spells it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// The status and the machine-readable code sent beside the message.
    fn kind(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The machine-readable code sent beside the message.
    pub fn code(&self) -> &'static str {
        self.kind().1
    }
}

impl From<crate::engine::Error> for ApiError {
    fn from(e: crate::engine::Error) -> Self {
        use crate::engine::Error;
        match e {
            Error::NotFound(_) => Self::NotFound(e.to_string()),
            Error::Invalid(f) => Self::Invalid(f),
            Error::AlreadyEnded { .. } | Error::RunEnded { .. } | Error::RunNotEnded { .. } => {
                Self::Conflict(e.to_string())
            }
            Error::Forbidden(message) => Self::Forbidden(message),
            Error::Store(s) => s.into(),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::Invalid(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound("not found".into()),
            StoreError::Conflict(msg) => Self::Conflict(msg),
            StoreError::Unavailable(msg) => Self::Unavailable(msg),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind().0
    }

    fn error_response(&self) -> HttpResponse {
        use actix_web::http::header;
        let (status, code) = self.kind();
        let mut body = ErrorBody {
            error: self.to_string(),
            code,
            field: None,
        };
        let mut response = HttpResponse::build(status);
        match self {
            Self::Invalid(f) => body.field = Some(f.field.to_string()),
            Self::Internal(detail) => tracing::error!(error = %detail, "request failed"),
            Self::Unavailable(detail) => tracing::warn!(error = %detail, "dependency unavailable"),
            Self::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, allow.as_str()));
            }
            Self::TooManyRequests {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            _ => {}
        }
        response.json(body)
    }
}
