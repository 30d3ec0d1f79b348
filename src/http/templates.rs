//! `/api/v1/templates`: saved run requests with typed parameters — create, read, list,
//! replace, delete, launch.

use actix_web::http::StatusCode;
use actix_web::{Responder, delete, get, post, put, web};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::auth::Caller;
use super::runs::{RunView, StrategyView, TargetsView};
use super::{
    AppState, BadRequest, Conflict, Errors, InvalidField, JsonBody, NotFound, OptionalJsonBody,
    PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable, UnsupportedMediaType,
};
use crate::domain::{JobKind, Micros, ParamType, TemplateRequest};
use crate::engine::LaunchRequest;
use crate::error::ApiError;
use crate::store::TemplateRow;

/// A parameter of a template, as shown (every field present, null when unset).
#[derive(Debug, Serialize, ToSchema)]
pub struct ParamView {
    /// Its name; the command sees `JOBEXEC_PARAM_<NAME>`.
    name: String,
    /// `string`, `integer`, `boolean` or `choice`.
    #[serde(rename = "type")]
    kind: ParamType,
    /// A launch must give it (unless it has a default).
    required: bool,
    /// Its default.
    #[schema(required = true, value_type = Option<Object>)]
    default: Option<Value>,
    /// `choice`: the values allowed.
    #[schema(required = true)]
    choices: Option<Vec<String>>,
    /// `string`: what the whole value must match.
    #[schema(required = true)]
    pattern: Option<String>,
    /// What it is for.
    #[schema(required = true)]
    description: Option<String>,
    /// Its values are sealed and never shown.
    secret: bool,
}

/// The template object.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    /// Its id.
    #[schema(format = Uuid)]
    id: String,
    /// Its unique name.
    name: String,
    /// What it is for.
    #[schema(required = true)]
    description: Option<String>,
    /// Its parameters.
    parameters: Vec<ParamView>,
    /// `command` or `script`.
    kind: JobKind,
    /// Command templates: the program.
    #[schema(required = true)]
    command: Option<String>,
    /// Arguments.
    #[schema(required = true)]
    args: Option<String>,
    /// Script templates: the script.
    #[schema(required = true)]
    script: Option<String>,
    /// Script templates: the interpreter.
    #[schema(required = true)]
    shell: Option<String>,
    /// Environment variables of the remote command.
    #[schema(value_type = BTreeMap<String, String>)]
    env: Value,
    /// Working directory on the hosts.
    #[schema(required = true)]
    cwd: Option<String>,
    /// Seconds each host's job is allowed.
    timeout: i64,
    /// Where it runs (a launch may say otherwise).
    targets: TargetsView,
    /// How hosts are admitted.
    strategy: StrategyView,
    /// When it was created.
    created_at: Micros,
    /// When it was last changed.
    updated_at: Micros,
}

impl TemplateView {
    fn of(row: &TemplateRow) -> Result<Self, ApiError> {
        let spec = row
            .job_spec()
            .ok_or_else(|| ApiError::Internal(format!("template {} cannot be read", row.id)))?;
        let strategy = row
            .strategy()
            .parse()
            .map_err(|e| ApiError::Internal(format!("template {}: {e}", row.id)))?;
        let parameters = (row.params().into_iter())
            .map(|p| ParamView {
                name: p.name,
                kind: p.kind,
                required: p.required,
                default: p.default,
                choices: p.choices,
                pattern: p.pattern,
                description: p.description,
                secret: p.secret,
            })
            .collect();
        Ok(TemplateView {
            id: row.id.clone(),
            name: row.name.clone(),
            description: row.description.clone(),
            parameters,
            kind: spec.kind,
            command: spec.command,
            args: spec.args,
            script: spec.script,
            shell: spec.shell,
            env: serde_json::to_value(&spec.env).unwrap_or_else(|_| json!({})),
            cwd: spec.cwd,
            timeout: spec.timeout_secs,
            targets: TargetsView::of(row.targets()),
            strategy: StrategyView::of(&strategy),
            created_at: Micros(row.created_at),
            updated_at: Micros(row.updated_at),
        })
    }
}

/// `GET /api/v1/templates`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    /// Every template, by name.
    templates: Vec<TemplateView>,
}

/// Save a template
///
/// A run request (the job fields, `targets`, `strategy`) with a name and typed
/// `parameters`. 409 when the name is taken.
#[utoipa::path(
    operation_id = "create_template",
    tag = "templates",
    request_body = TemplateRequest,
    responses(
        (status = 201, description = "The template.", body = TemplateView),
        Errors<(BadRequest, Unauthorized, Conflict, PayloadTooLarge, UnsupportedMediaType, InvalidField, Unavailable)>,
    )
)]
#[post("/templates")]
pub async fn create_template(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(request): JsonBody<TemplateRequest>,
) -> Result<actix_web::CustomizeResponder<web::Json<TemplateView>>, ApiError> {
    let row = state
        .engine
        .create_template(&caller.actor(), request)
        .await?;
    Ok(web::Json(TemplateView::of(&row)?)
        .customize()
        .with_status(StatusCode::CREATED))
}

/// List templates
#[utoipa::path(
    operation_id = "list_templates",
    tag = "templates",
    responses(
        (status = 200, description = "Every template, by name.", body = TemplateList),
        Errors<(Unauthorized, Unavailable)>,
    )
)]
#[get("/templates")]
pub async fn list_templates(
    state: web::Data<AppState>,
) -> Result<web::Json<TemplateList>, ApiError> {
    let rows = state.engine.templates().await?;
    let templates = rows
        .iter()
        .map(TemplateView::of)
        .collect::<Result<_, _>>()?;
    Ok(web::Json(TemplateList { templates }))
}

/// One template
#[utoipa::path(
    operation_id = "get_template",
    tag = "templates",
    params(("name_or_id" = String, Path, description = "The template's name or id.")),
    responses(
        (status = 200, description = "The template.", body = TemplateView),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[get("/templates/{name_or_id}")]
pub async fn get_template(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<web::Json<TemplateView>, ApiError> {
    let row = state.engine.template(&path).await?;
    Ok(web::Json(TemplateView::of(&row)?))
}

/// Replace a template
///
/// The whole definition, as a create takes it; the id stays.
#[utoipa::path(
    operation_id = "update_template",
    tag = "templates",
    params(("name_or_id" = String, Path, description = "The template's name or id.")),
    request_body = TemplateRequest,
    responses(
        (status = 200, description = "The template.", body = TemplateView),
        Errors<(BadRequest, Unauthorized, NotFound, Conflict, PayloadTooLarge, UnsupportedMediaType, InvalidField, Unavailable)>,
    )
)]
#[put("/templates/{name_or_id}")]
pub async fn update_template(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    JsonBody(request): JsonBody<TemplateRequest>,
) -> Result<web::Json<TemplateView>, ApiError> {
    let row = state
        .engine
        .update_template(&caller.actor(), &path, request)
        .await?;
    Ok(web::Json(TemplateView::of(&row)?))
}

/// A confirmation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// What was done.
    message: String,
}

/// Delete a template
///
/// The runs it launched stay (they keep its id).
#[utoipa::path(
    operation_id = "delete_template",
    tag = "templates",
    params(("name_or_id" = String, Path, description = "The template's name or id.")),
    responses(
        (status = 200, description = "Deleted.", body = Deleted),
        Errors<(Unauthorized, NotFound, Conflict, Unavailable)>,
    )
)]
#[delete("/templates/{name_or_id}")]
pub async fn delete_template(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<Deleted>, ApiError> {
    state.engine.delete_template(&caller.actor(), &path).await?;
    Ok(web::Json(Deleted {
        message: format!("template {} deleted", path.as_str()),
    }))
}

/// Launch a template
///
/// Its parameters' values are checked (422 naming `parameters.<name>`: missing, of the
/// wrong type, not a choice, not matching the pattern) and reach the remote command only
/// as environment variables `JOBEXEC_PARAM_<NAME>`; secret ones are sealed and never shown.
#[utoipa::path(
    operation_id = "launch_template",
    tag = "templates",
    params(("name_or_id" = String, Path, description = "The template's name or id.")),
    request_body = Option<LaunchRequest>,
    responses(
        (status = 201, description = "The run.", body = RunView),
        Errors<(BadRequest, Unauthorized, NotFound, PayloadTooLarge, UnsupportedMediaType, InvalidField, TooManyRequests, Unavailable)>,
    )
)]
#[post("/templates/{name_or_id}/launch")]
pub async fn launch_template(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    OptionalJsonBody(request): OptionalJsonBody<LaunchRequest>,
) -> Result<actix_web::CustomizeResponder<web::Json<RunView>>, ApiError> {
    state.limit_submissions(&caller)?;
    let run = state.engine.launch(&caller.actor(), &path, request).await?;
    Ok(web::Json(RunView::of(&run))
        .customize()
        .with_status(StatusCode::CREATED))
}
