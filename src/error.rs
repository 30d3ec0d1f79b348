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
    /// Machine-readable: `bad_request`, `unauthorized`, `not_found`, `method_not_allowed`,
    /// `conflict`, `payload_too_large`, `invalid_field`, `too_many_requests`, `unavailable`
    /// or `internal`.
    #[schema(value_type = String, example = "not_found")]
    pub code: &'static str,
    /// The offending field of a 422 (`invalid_field`), as the API spells it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// The machine-readable code sent beside the message.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Invalid(_) => "invalid_field",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<crate::engine::Error> for ApiError {
    fn from(e: crate::engine::Error) -> Self {
        use crate::engine::Error;
        match e {
            Error::NotFound(_) => Self::NotFound(e.to_string()),
            Error::Invalid(f) => Self::Invalid(f),
            Error::AlreadyEnded { .. } => Self::Conflict(e.to_string()),
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
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = ErrorBody {
            error: self.to_string(),
            code: self.code(),
            field: None,
        };
        match self {
            Self::Invalid(f) => body.field = Some(f.field.to_string()),
            Self::Internal(detail) => tracing::error!(error = %detail, "request failed"),
            Self::Unavailable(detail) => tracing::warn!(error = %detail, "dependency unavailable"),
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized(_) => {
                response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::MethodNotAllowed { allow, .. } => {
                response.insert_header((actix_web::http::header::ALLOW, allow.as_str()));
            }
            Self::TooManyRequests {
                retry_after_secs, ..
            } => {
                response.insert_header((
                    actix_web::http::header::RETRY_AFTER,
                    retry_after_secs.to_string(),
                ));
            }
            _ => {}
        }
        response.json(body)
    }
}
