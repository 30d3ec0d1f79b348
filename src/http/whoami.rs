//! `GET /api/v1/whoami`: the caller's token name, role and scope.

use actix_web::{get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::{AppState, Errors, Unauthorized};
use crate::domain::Role;

/// Who the caller is and what it may do.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// The token's name (`anonymous` when the service has no tokens).
    name: String,
    /// `viewer`, `operator` or `admin`.
    role: Role,
    /// The label selector of the servers it may reach; null: every server.
    #[schema(required = true)]
    scope: Option<String>,
    /// Whether the service needs a token (false: anyone on loopback is `admin`).
    tokens_required: bool,
}

/// Who am I
///
/// The name, role and scope of the token (or dashboard session) the request carries.
#[utoipa::path(
    operation_id = "whoami",
    tag = "access",
    responses(
        (status = 200, description = "The caller.", body = WhoAmI),
        Errors<(Unauthorized,)>,
    )
)]
#[get("/whoami")]
pub async fn whoami(state: web::Data<AppState>, caller: web::ReqData<Caller>) -> web::Json<WhoAmI> {
    let caller = caller.into_inner();
    web::Json(WhoAmI {
        name: caller.name,
        role: caller.access.role,
        scope: caller.access.scope.map(|s| s.to_string()),
        tokens_required: state.tokens.enabled(),
    })
}
