//! What the settings file declares beside servers: `[[templates]]`, `[[schedules]]` and
//! `[[webhooks]]`, created or updated by name at start and on SIGHUP.
//!
//! Every table is checked before any is written, so a bad one changes nothing; templates are
//! written before the schedules that launch them. A table that says what the database
//! already holds is left alone: no audit record, and a schedule keeps its cursor (an update
//! would make it fire from now on, and a restart would lose the fires `catch_up` makes up).
//! Templates, schedules and webhooks no longer in the file stay as they are.

use secrecy::ExposeSecret;

use super::schedules::check_schedule;
use super::templates::template_row;
use super::webhooks::check_webhook;
use super::{Actor, Engine, Error, ScheduleRequest, StartError, WebhookFilter, WebhookRequest};
use crate::settings::{ScheduleSettings, Settings, WebhookTableSettings};
use crate::store::{ScheduleRow, StoreError, TemplateRow, WebhookRow};

/// What [`Engine::apply_declared`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    /// `[[templates]]` tables in the file.
    pub templates: usize,
    /// `[[schedules]]` tables in the file.
    pub schedules: usize,
    /// `[[webhooks]]` tables in the file.
    pub webhooks: usize,
    /// Of those, how many were created or changed.
    pub changed: usize,
}

impl From<&ScheduleSettings> for ScheduleRequest {
    fn from(s: &ScheduleSettings) -> Self {
        ScheduleRequest {
            name: Some(s.name.clone()),
            template: Some(s.template.clone()),
            parameters: s.parameters.clone(),
            cron: Some(s.cron.clone()),
            timezone: s.timezone.clone(),
            overlap: s.overlap.clone(),
            catch_up: s.catch_up.clone(),
            paused: s.paused,
        }
    }
}

/// The API's webhook body for a `[[webhooks]]` table, its secret file read. No secret is
/// `""`, which removes one set before: the file is the definition.
pub fn webhook_request(table: &WebhookTableSettings) -> Result<WebhookRequest, String> {
    let secret = table.read_secret()?;
    Ok(WebhookRequest {
        name: Some(table.name.clone()),
        url: Some(table.url.clone()),
        events: Some(table.events.clone()),
        filter: table.filter.as_ref().map(|f| WebhookFilter {
            selector: f.selector.clone(),
            template: f.template.clone(),
        }),
        secret: Some(secret.map_or_else(String::new, |s| s.expose_secret().to_string())),
        active: table.active,
    })
}

/// Whether two rows of one webhook define the same thing, their secrets aside.
fn same_webhook(a: &WebhookRow, b: &WebhookRow) -> bool {
    (&a.url, &a.events, &a.selector, &a.template_id, a.active)
        == (&b.url, &b.events, &b.selector, &b.template_id, b.active)
}

/// Whether two rows of one template define the same thing.
fn same_template(a: &TemplateRow, b: &TemplateRow) -> bool {
    (
        &a.description,
        &a.spec,
        &a.targets,
        &a.strategy,
        &a.parameters,
    ) == (
        &b.description,
        &b.spec,
        &b.targets,
        &b.strategy,
        &b.parameters,
    )
}

/// The first name `names` holds twice.
fn used_twice<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<&'a String> {
    let mut seen = std::collections::HashSet::new();
    names.into_iter().find(|name| !seen.insert(*name))
}

/// The actor the audit records for what the file changed.
fn file_actor() -> Actor {
    Actor {
        name: "settings-file".into(),
        peer: None,
        access: crate::domain::Access::admin(),
    }
}

impl Engine {
    /// Apply the file's `[[templates]]` and then its `[[schedules]]` (see the module's
    /// doc). A schedule's template is one of the file's or one already saved.
    pub async fn apply_declared(&self, settings: &Settings) -> Result<Declared, StartError> {
        let limits = settings.jobs.limits();
        let template_error =
            |name: &str, e: Error| StartError::Declared(format!("[[templates]] {name:?}: {e}"));
        let schedule_error =
            |name: &str, e: Error| StartError::Declared(format!("[[schedules]] {name:?}: {e}"));
        let twice = || Error::Invalid(crate::domain::FieldError::new("name", "is used twice"));
        if let Some(name) = used_twice(settings.templates.iter().map(|t| &t.name)) {
            return Err(template_error(name, twice()));
        }
        if let Some(name) = used_twice(settings.schedules.iter().map(|t| &t.name)) {
            return Err(schedule_error(name, twice()));
        }
        if let Some(name) = used_twice(settings.webhooks.iter().map(|t| &t.name)) {
            return Err(StartError::Declared(format!(
                "[[webhooks]] {name:?}: {}",
                twice()
            )));
        }
        let mut rows = Vec::new();
        for table in &settings.templates {
            let row = template_row(table.to_request(), None, &limits)
                .map_err(|e| template_error(&table.name, e))?;
            rows.push(row);
        }
        for table in &settings.schedules {
            let params = match rows.iter().find(|r| r.name == table.template) {
                Some(row) => row.params(),
                None => self
                    .template(&table.template)
                    .await
                    .map_err(|e| schedule_error(&table.name, e))?
                    .params(),
            };
            check_schedule(&ScheduleRequest::from(table), Some(&params))
                .map_err(|e| schedule_error(&table.name, e))?;
        }

        let mut hooks = Vec::new();
        for table in &settings.webhooks {
            let failed =
                |e: String| StartError::Declared(format!("[[webhooks]] {:?}: {e}", table.name));
            let request = webhook_request(table).map_err(failed)?;
            check_webhook(request.clone()).map_err(|e| failed(e.to_string()))?;
            if let Some(t) = table.filter.as_ref().and_then(|f| f.template.as_ref())
                && !settings.templates.iter().any(|s| &s.name == t)
            {
                self.template(t).await.map_err(|e| failed(e.to_string()))?;
            }
            hooks.push(request);
        }

        let actor = file_actor();
        let mut changed = 0;
        for (table, row) in settings.templates.iter().zip(&rows) {
            let failed = |e| template_error(&table.name, e);
            match self.store.get_template(table.name.clone()).await {
                Ok(old) if same_template(&old, row) => continue,
                Ok(old) => drop(
                    (self
                        .update_template(&actor, &old.id, table.to_request())
                        .await)
                        .map_err(failed)?,
                ),
                Err(StoreError::NotFound) => {
                    drop((self.create_template(&actor, table.to_request()).await).map_err(failed)?)
                }
                Err(e) => return Err(failed(e.into())),
            }
            tracing::info!(name = %table.name, "template from the settings file applied");
            changed += 1;
        }
        for table in &settings.schedules {
            let request = ScheduleRequest::from(table);
            let failed = |e| schedule_error(&table.name, e);
            match self.store.get_schedule(table.name.clone()).await {
                Ok(old) => {
                    let new =
                        (self.schedule_row(&actor, request, Some(&old)).await).map_err(failed)?;
                    if self.same_schedule(&old, &new).map_err(failed)? {
                        continue;
                    }
                    let request = ScheduleRequest::from(table);
                    (self.update_schedule(&actor, &old.id, request).await).map_err(failed)?;
                }
                Err(StoreError::NotFound) => {
                    (self.create_schedule(&actor, request).await).map_err(failed)?;
                }
                Err(e) => return Err(failed(e.into())),
            }
            tracing::info!(name = %table.name, "schedule from the settings file applied");
            changed += 1;
        }
        for request in hooks {
            let name = request.name.clone().unwrap_or_default();
            let failed = |e: Error| StartError::Declared(format!("[[webhooks]] {name:?}: {e}"));
            match self.store.get_webhook(name.clone()).await {
                Ok(old) => {
                    if self
                        .same_declared_webhook(&old, &request)
                        .await
                        .map_err(failed)?
                    {
                        continue;
                    }
                    (self.update_webhook(&actor, &old.id, request).await).map_err(failed)?;
                }
                Err(StoreError::NotFound) => {
                    (self.create_webhook(&actor, request).await).map_err(failed)?;
                }
                Err(e) => return Err(failed(e.into())),
            }
            tracing::info!(name = %name, "webhook from the settings file applied");
            changed += 1;
        }
        Ok(Declared {
            templates: settings.templates.len(),
            schedules: settings.schedules.len(),
            webhooks: settings.webhooks.len(),
            changed,
        })
    }

    /// Whether a saved webhook already is what `request` declares (its secret compared
    /// opened: each sealing differs).
    async fn same_declared_webhook(
        &self,
        old: &WebhookRow,
        request: &WebhookRequest,
    ) -> Result<bool, Error> {
        let new = self.webhook_row(request.clone(), Some(old)).await?;
        let wanted = request.secret.as_deref().filter(|s| !s.is_empty());
        Ok(same_webhook(old, &new) && self.store.webhook_secret(old)?.as_deref() == wanted)
    }

    /// Whether two rows of one schedule define the same thing (secret values compared
    /// opened: each sealing differs).
    fn same_schedule(&self, a: &ScheduleRow, b: &ScheduleRow) -> Result<bool, Error> {
        let shown = |r: &ScheduleRow| {
            let ScheduleRow {
                template_id,
                parameters,
                cron,
                timezone,
                overlap,
                catch_up_secs,
                paused,
                scope,
                ..
            } = r;
            (
                template_id.clone(),
                parameters.clone(),
                cron.clone(),
                timezone.clone(),
                overlap.clone(),
                *catch_up_secs,
                *paused,
                scope.clone(),
            )
        };
        Ok(shown(a) == shown(b)
            && self.store.schedule_secret_params(a)? == self.store.schedule_secret_params(b)?)
    }
}
