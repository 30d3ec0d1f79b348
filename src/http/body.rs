//! `JsonBody<T>`: the request body as `T`, with the error contract applied; and
//! `OptionalJsonBody<T>` for the routes whose body may be left out (no body, or `null`, is
//! `T::default()`).
//!
//! - no body where one is required → 400;
//! - a body not said to be JSON (`Content-Type: application/json`, UTF-8 if a charset is
//!   given) → 415, so a web page cannot slip one past the browser as a "simple" `text/plain`
//!   request (no CORS preflight); an empty optional body needs no type;
//! - larger than `http.max_body_bytes` → 413 (checked on `Content-Length` first, then while
//!   reading, so a lying or absent header changes nothing);
//! - not JSON → 400, saying where it broke;
//! - JSON of the wrong shape → 422 naming the field (`serde_path_to_error`); for a secret
//!   field ([`SECRET_FIELDS`]) the message does not quote the value.

use std::future::Future;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use futures::StreamExt;
use futures::future::{FutureExt, LocalBoxFuture};
use serde::de::DeserializeOwned;

use super::AppState;
use crate::domain::FieldError;
use crate::error::ApiError;

/// A request body parsed as JSON into `T`; the body is required.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// A request body parsed as JSON into `T`, or `T::default()` when there is none (an empty
/// body or `null`).
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read(req, payload);
        async move {
            let missing =
                || ApiError::BadRequest("a JSON object is required as the request body".into());
            body.await?.ok_or_else(missing).map(JsonBody)
        }
        .boxed_local()
    }
}

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read(req, payload);
        async move { Ok(OptionalJsonBody(body.await?.unwrap_or_default())) }.boxed_local()
    }
}

/// The body as `T`, up to `http.max_body_bytes` (413 past it); `None` when there is none
/// (empty, or only `null`).
fn read<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: &mut Payload,
) -> impl Future<Output = Result<Option<T>, ApiError>> + 'static {
    let limit = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.engine.settings().http.max_body_bytes)
        .unwrap_or(10 * 1024 * 1024);
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let json = says_json(req);
    let mut payload = payload.take();
    async move {
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        let trimmed = body.trim_ascii();
        if trimmed.is_empty() {
            return Ok(None);
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType(
                "the request body must be JSON, sent with Content-Type: application/json".into(),
            ));
        }
        if trimmed == b"null" {
            return Ok(None);
        }
        parse(&body).map(Some)
    }
}

/// Whether the request says its body is JSON: `application/json`, UTF-8 if a charset is given.
fn says_json(req: &HttpRequest) -> bool {
    use actix_web::HttpMessage as _;
    req.mime_type().ok().flatten().is_some_and(|m| {
        m.essence_str() == "application/json"
            && (m.get_param(actix_web::mime::CHARSET))
                .is_none_or(|c| c.as_str().eq_ignore_ascii_case("utf-8"))
    })
}

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!("the request body is larger than {limit} bytes"))
}

/// Fields whose value a message never quotes (a password typed as a number is still one).
const SECRET_FIELDS: [&str; 4] = ["password", "private_key", "private_key_passphrase", "token"];

/// Parse a JSON body: 400 when it is not JSON (or not an object), 422 naming the field when
/// a value has the wrong type.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let mut message = e.into_inner().to_string();
        if SECRET_FIELDS
            .iter()
            .any(|s| field.rsplit('.').next() == Some(*s))
        {
            // serde quotes the value it got between backquotes: `12345678`.
            let parts = message.split('`').enumerate();
            message = (parts.map(|(i, p)| if i % 2 == 1 { "(not shown)" } else { p })).collect();
        }
        ApiError::Invalid(FieldError::new(field, message))
    })
}
