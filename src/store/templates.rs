//! Queries on `templates`.

use diesel::prelude::*;

use super::schema::{runs, templates};
use super::{Store, StoreError, conflict_on_unique};

/// A `templates` row: the run request as JSON parts, and the parameters' definitions.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = templates)]
#[diesel(treat_none_as_null = true)]
pub struct TemplateRow {
    /// UUID.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// The job ([`crate::domain::JobSpec`] as JSON).
    pub spec: String,
    /// The targets ([`crate::domain::TargetsRequest`] as JSON).
    pub targets: String,
    /// The strategy ([`crate::domain::StrategyRequest`] as JSON).
    pub strategy: String,
    /// The parameters ([`crate::domain::ParamDef`]s as a JSON array).
    pub parameters: String,
    /// Creation time.
    pub created_at: i64,
    /// Last update time.
    pub updated_at: i64,
}

named_rows!(
    "template",
    templates,
    TemplateRow,
    insert_template,
    get_template,
    list_templates,
    update_template
);

impl Store {
    /// Delete a template; runs it launched keep its id.
    pub async fn delete_template(&self, id: String) -> Result<(), StoreError> {
        self.run(move |conn| {
            let n = diesel::delete(templates::table.find(&id)).execute(conn)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    /// How many runs a template launched.
    pub async fn template_runs(&self, id: String) -> Result<i64, StoreError> {
        self.run(move |conn| {
            Ok(runs::table
                .filter(runs::template_id.eq(&id))
                .count()
                .get_result(conn)?)
        })
        .await
    }
}
