//! The HTTP client: requests to `/api/v1`, errors turned into one clear sentence.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use serde_json::Value;

/// Bound of one ordinary request (a connection test takes up to the server's own bound).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An error answered by the API: its status and the `error` field of its JSON body.
#[derive(Debug, thiserror::Error)]
#[error("{message} (HTTP {status})")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The API's message (or the body's text when it is not the JSON error shape).
    pub message: String,
}

/// A client of one service.
pub struct Api {
    http: reqwest::Client,
    /// The service's root, without a trailing slash.
    base: String,
}

impl Api {
    /// A client of the service at `url`, sending `token` as a bearer token when given, and
    /// trusting the PEM certificate(s) in `ca_cert` beside the system's roots for https.
    pub fn new(url: &str, token: Option<&str>, ca_cert: Option<&Path>) -> anyhow::Result<Api> {
        let base = url.trim().trim_end_matches('/');
        let base = base.strip_suffix("/api/v1").unwrap_or(base).to_string();
        let parsed =
            reqwest::Url::parse(&base).map_err(|e| anyhow!("--url {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(anyhow!("--url {url:?}: use an http:// or https:// URL"));
        }
        let mut headers = header::HeaderMap::new();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let mut value = header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!("the token contains characters not allowed in a header"))?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder().use_rustls_tls();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-cert {}: not PEM certificates", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("jobctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api { http, base })
    }

    /// A request without the ordinary time bound (for the event stream).
    pub fn stream_request(&self, path: &str) -> RequestBuilder {
        self.http
            .get(format!("{}/api/v1{path}", self.base))
            .header(header::ACCEPT, "text/event-stream")
    }

    /// A sentence for a request that got no answer.
    pub fn transport_error(&self, e: &reqwest::Error) -> anyhow::Error {
        let cause = root_cause(e);
        if e.is_connect() {
            anyhow!(
                "the service at {} is not reachable: {cause} (is it running? set --url or JOBEXEC_URL)",
                self.base
            )
        } else if e.is_timeout() {
            anyhow!("the service at {} did not answer in time", self.base)
        } else {
            anyhow!("request to the service at {} failed: {cause}", self.base)
        }
    }

    /// A request to an API path, with the ordinary time bound.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/api/v1{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
    }

    /// Send a request → the answer's JSON; a transport failure becomes a sentence naming
    /// the service.
    pub async fn send(&self, req: RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        json_of(resp).await
    }

    /// `GET path` → JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, path)).await
    }

    /// `POST path` with a JSON body → JSON (see [`Api::call`]).
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, body).await
    }

    /// `method path` with a JSON body → JSON. The body's null fields are left out: an absent
    /// field is an option not given.
    pub async fn call(&self, method: Method, path: &str, mut body: Value) -> anyhow::Result<Value> {
        if let Some(fields) = body.as_object_mut() {
            fields.retain(|_, v| !v.is_null());
        }
        self.send(self.request(method, path).json(&body)).await
    }

    /// The registered servers.
    pub async fn servers(&self) -> anyhow::Result<Vec<Value>> {
        self.servers_matching(None).await
    }

    /// The registered servers a label selector matches (all without one).
    pub async fn servers_matching(&self, selector: Option<&str>) -> anyhow::Result<Vec<Value>> {
        let query = [("labels", selector)];
        let mut list = self
            .send(self.request(Method::GET, "/servers").query(&query))
            .await?;
        Ok(serde_json::from_value(list["servers"].take()).unwrap_or_default())
    }

    /// The id of a server named by id or by name (a non-UUID is looked up by name).
    pub async fn resolve_server(&self, name_or_id: &str) -> anyhow::Result<String> {
        if uuid::Uuid::parse_str(name_or_id).is_ok() {
            return Ok(name_or_id.to_string());
        }
        self.servers()
            .await?
            .iter()
            .find(|s| s["name"] == name_or_id)
            .and_then(|s| s["id"].as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no server is named {name_or_id:?} (see `jobctl servers list`)"))
    }

    /// [`Api::resolve_server`] of an optional server.
    pub async fn resolve_opt(&self, name_or_id: Option<&str>) -> anyhow::Result<Option<String>> {
        match name_or_id {
            Some(s) => self.resolve_server(s).await.map(Some),
            None => Ok(None),
        }
    }
}

/// The JSON of a successful response (`null` for a 204), or the API's error.
pub async fn json_of(resp: Response) -> anyhow::Result<Value> {
    let status = resp.status();
    if !status.is_success() {
        return Err(error_of(resp).await.into());
    }
    let text = resp
        .text()
        .await
        .map_err(|e| anyhow!("cannot read the answer: {}", root_cause(&e)))?;
    // 204 No Content (a delete): nothing to show.
    if status == StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("the service answered {status} with a body that is not JSON: {e}"))
}

/// The API error of a failed response.
pub async fn error_of(resp: Response) -> ApiError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let error = serde_json::from_str::<Value>(&text).ok();
    let message = match (
        error.as_ref().and_then(|v| v["error"].as_str()),
        text.trim(),
    ) {
        (Some(error), _) => error.to_string(),
        (None, "") => "request failed".to_string(),
        (None, text) => text.chars().take(200).collect(),
    };
    ApiError { status, message }
}

/// The innermost cause of an error, as text ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let causes = std::iter::successors(Some(e), |e| e.source());
    causes.last().map(ToString::to_string).unwrap_or_default()
}

/// The API path of job `id` plus `rest`.
pub fn job_path(id: &str, rest: &str) -> String {
    format!("/jobs/{}{rest}", escape(id))
}

/// `s` percent-escaped for a path segment or a query value.
pub fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
