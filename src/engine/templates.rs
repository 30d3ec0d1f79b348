//! Templates: create, read, list, replace, delete, and launch (a run whose jobs get the
//! checked parameter values as `JOBEXEC_PARAM_<NAME>`, the secret ones sealed apart).

use crate::domain::{Action, Area};
use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::runs::Origin;
use super::{Actor, Engine, Error, Subject};
use crate::domain::{
    FieldError, JobLimits, JobSpec, Micros, NewRun, ParamDef, StrategyRequest, TargetsRequest,
    TemplateRequest, check_launch, valid_template_name, validate_params,
};
use crate::store::{Run, TemplateRow};

/// `POST /templates/{name_or_id}/launch`.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct LaunchRequest {
    /// The parameters' values, by name (strings, integers, booleans as the types say).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<BTreeMap<String, Value>>,
    /// Other targets than the template's, for this launch.
    pub targets: Option<TargetsRequest>,
}

impl TemplateRow {
    /// The parameters' definitions.
    pub fn params(&self) -> Vec<ParamDef> {
        serde_json::from_str(&self.parameters).unwrap_or_default()
    }

    /// The job it runs.
    pub fn job_spec(&self) -> Option<JobSpec> {
        serde_json::from_str(&self.spec).ok()
    }

    /// Its targets.
    pub fn targets(&self) -> TargetsRequest {
        serde_json::from_str(&self.targets).unwrap_or_default()
    }

    /// Its strategy, as given.
    pub fn strategy(&self) -> StrategyRequest {
        serde_json::from_str(&self.strategy).unwrap_or_default()
    }
}

/// Check a template request whole, as saving it would (`limits`: the job limits of the
/// settings); the row it makes (a new id, or `id` kept).
pub fn template_row(
    request: TemplateRequest,
    id: Option<(String, i64)>,
    limits: &JobLimits,
) -> Result<TemplateRow, Error> {
    let name = request
        .name
        .ok_or_else(|| FieldError::new("name", "is required"))?;
    if !valid_template_name(&name) {
        return Err(FieldError::new(
            "name",
            "must be 1 to 128 of letters, digits, '.', '_' and '-'",
        )
        .into());
    }
    if request
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 1024)
    {
        return Err(FieldError::new("description", "is longer than 1024 characters").into());
    }
    let params = request.parameters.unwrap_or_default();
    validate_params(&params)?;
    let strategy = request.run.strategy.clone().unwrap_or_default();
    let new = request.run.validate(limits)?;
    let now = Micros::now().0;
    let (id, created_at) = id.unwrap_or_else(|| (uuid::Uuid::now_v7().to_string(), now));
    Ok(TemplateRow {
        id,
        name,
        description: request.description,
        spec: serde_json::to_string(&new.spec).unwrap_or_default(),
        targets: serde_json::to_string(&new.targets_given).unwrap_or_default(),
        strategy: serde_json::to_string(&strategy).unwrap_or_default(),
        parameters: serde_json::to_string(&params).unwrap_or_default(),
        created_at,
        updated_at: now,
    })
}

impl Engine {
    fn template_row(
        &self,
        request: TemplateRequest,
        id: Option<(String, i64)>,
    ) -> Result<TemplateRow, Error> {
        template_row(request, id, &self.settings.jobs.limits())
    }

    /// Save a new template.
    pub async fn create_template(
        &self,
        actor: &Actor,
        request: TemplateRequest,
    ) -> Result<TemplateRow, Error> {
        self.allow(actor, Action::Create(Area::Templates)).await?;
        let row = self.template_row(request, None)?;
        let row = self.store.insert_template(row).await?;
        self.audit(actor, "template.create", &row.id, json!({"name": row.name}))
            .await;
        Ok(row)
    }

    /// One template, by name or id.
    pub async fn template(&self, name_or_id: &str) -> Result<TemplateRow, Error> {
        self.store
            .get_template(name_or_id.to_string())
            .await
            .map_err(Error::store(|| Subject::Template(name_or_id.to_string())))
    }

    /// Every template, by name.
    pub async fn templates(&self) -> Result<Vec<TemplateRow>, Error> {
        Ok(self.store.list_templates().await?)
    }

    /// Replace a template's definition.
    pub async fn update_template(
        &self,
        actor: &Actor,
        name_or_id: &str,
        request: TemplateRequest,
    ) -> Result<TemplateRow, Error> {
        self.allow(actor, Action::Update(Area::Templates)).await?;
        let old = self.template(name_or_id).await?;
        let row = self.template_row(request, Some((old.id, old.created_at)))?;
        let row = self.store.update_template(row).await?;
        self.audit(actor, "template.update", &row.id, json!({"name": row.name}))
            .await;
        Ok(row)
    }

    /// Delete a template (the runs it launched stay).
    pub async fn delete_template(&self, actor: &Actor, name_or_id: &str) -> Result<(), Error> {
        self.allow(actor, Action::Delete(Area::Templates)).await?;
        let row = self.template(name_or_id).await?;
        let used = self.store.schedules_of_template(row.id.clone()).await?;
        if used > 0 {
            return Err(Error::Store(crate::store::StoreError::Conflict(format!(
                "template {:?} is launched by {used} schedule(s); delete them first",
                row.name
            ))));
        }
        self.store.delete_template(row.id.clone()).await?;
        self.audit(actor, "template.delete", &row.id, json!({"name": row.name}))
            .await;
        Ok(())
    }

    /// Launch a template: its values checked (422 naming `parameters.<name>`), a run over
    /// its targets (or `targets`), its jobs seeing the values as `JOBEXEC_PARAM_<NAME>`.
    pub async fn launch(
        &self,
        actor: &Actor,
        name_or_id: &str,
        request: LaunchRequest,
    ) -> Result<Run, Error> {
        self.allow(actor, Action::Launch).await?;
        self.launch_with(actor, name_or_id, request, BTreeMap::new(), None)
            .await
    }

    /// [`Engine::launch`], the jobs also seeing `extra` (a schedule's fire time), the run
    /// under `run_id` when given.
    pub(super) async fn launch_with(
        &self,
        actor: &Actor,
        name_or_id: &str,
        request: LaunchRequest,
        extra: BTreeMap<String, String>,
        run_id: Option<String>,
    ) -> Result<Run, Error> {
        let tpl = self.template(name_or_id).await?;
        let given = request.parameters.unwrap_or_default();
        let launch = check_launch(&tpl.params(), &given)?;
        let mut spec = tpl
            .job_spec()
            .ok_or_else(|| Error::Invalid(FieldError::new("template", "cannot be read")))?;
        spec.env.extend(launch.env);
        spec.env.extend(extra);
        let targets_given = request.targets.unwrap_or_else(|| tpl.targets());
        let new = NewRun {
            spec,
            targets: targets_given.clone().parse()?,
            targets_given,
            strategy: tpl.strategy().parse()?,
        };
        let origin = Origin {
            template_id: Some(tpl.id.clone()),
            parameters: Some(serde_json::to_string(&launch.values).unwrap_or_default()),
            secret_env: launch.secret_env,
            run_id,
        };
        self.create_run(actor, new, None, origin).await
    }
}
