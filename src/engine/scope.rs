//! Scope: which servers a caller's token reaches. A scoped caller sees only the servers its
//! selector matches, the jobs on them and the runs wholly on them (anything else answers as
//! missing, so its existence does not leak), and cannot start work outside them (refused
//! whole, naming the servers). Every use case that reads or starts work asks here.

use std::collections::HashSet;

use serde_json::json;

use super::{Actor, Engine, Error};
use crate::domain::{Labels, Selector};
use crate::store::ServerRow;

/// The servers a caller reaches.
#[derive(Debug, Clone)]
pub(crate) struct Reach(Option<HashSet<String>>);

impl Reach {
    /// Whether server `id` is in reach.
    pub(crate) fn has(&self, id: &str) -> bool {
        self.0.as_ref().is_none_or(|ids| ids.contains(id))
    }

    /// The ids in reach, for a store filter (`None`: every server).
    pub(crate) fn ids(&self) -> Option<Vec<String>> {
        self.0.as_ref().map(|ids| ids.iter().cloned().collect())
    }
}

impl Engine {
    /// The servers `actor` reaches: every one without a scope, else those its selector
    /// matches now (labels change; the scope follows them).
    pub(crate) async fn reach(&self, actor: &Actor) -> Result<Reach, Error> {
        let Some(scope) = &actor.access.scope else {
            return Ok(Reach(None));
        };
        let servers = self.store.list_servers().await?;
        let ids = (servers.into_iter())
            .filter(|s| scope.matches(&s.labels()))
            .map(|s| s.id)
            .collect();
        Ok(Reach(Some(ids)))
    }

    /// Whether `actor` reaches server `id` (a server that is gone is out of reach).
    pub(crate) async fn reaches(&self, actor: &Actor, id: &str) -> Result<bool, Error> {
        let Some(scope) = &actor.access.scope else {
            return Ok(true);
        };
        let Ok(uuid) = id.parse::<uuid::Uuid>() else {
            return Ok(false);
        };
        match self.store.get_server(uuid).await {
            Ok(row) => Ok(scope.matches(&row.labels())),
            Err(crate::store::StoreError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// `hosts` as `(id, name)`, or refused whole (403, recorded as `access.denied`) when
    /// any of them is outside `actor`'s scope; the message names those servers.
    pub(crate) async fn may_start_on(
        &self,
        actor: &Actor,
        hosts: Vec<ServerRow>,
    ) -> Result<Vec<(String, String)>, Error> {
        if let Some(scope) = &actor.access.scope {
            let outside: Vec<&str> = (hosts.iter())
                .filter(|row| !scope.matches(&row.labels()))
                .map(|row| row.name.as_str())
                .collect();
            self.refuse_outside(actor, scope, &outside).await?;
        }
        Ok(hosts.into_iter().map(|row| (row.id, row.name)).collect())
    }

    /// Refused (403, recorded) when `row`, a server `actor` would start work on, is outside
    /// its scope.
    pub(crate) async fn may_start_on_server(
        &self,
        actor: &Actor,
        row: &ServerRow,
    ) -> Result<(), Error> {
        match &actor.access.scope {
            Some(scope) if !scope.matches(&row.labels()) => {
                self.refuse_outside(actor, scope, &[row.name.as_str()])
                    .await
            }
            _ => Ok(()),
        }
    }

    /// `Ok` when `outside` is empty, else the refusal naming those servers, audited.
    async fn refuse_outside(
        &self,
        actor: &Actor,
        scope: &Selector,
        outside: &[&str],
    ) -> Result<(), Error> {
        if outside.is_empty() {
            return Ok(());
        }
        let message = format!(
            "this token's scope ({scope}) does not reach {}: {}",
            if outside.len() == 1 {
                "the server"
            } else {
                "the servers"
            },
            outside.join(", ")
        );
        tracing::info!(actor = %actor.name, %scope, servers = ?outside, "refused: outside the scope");
        let detail = json!({
            "action": "start work outside the scope",
            "role": actor.access.role,
            "scope": scope.to_string(),
            "servers": outside,
        });
        self.audit(actor, "access.denied", &actor.name, detail)
            .await;
        Err(Error::Forbidden(message))
    }

    /// Refused (403) when a server with `labels` would be outside `actor`'s scope: a scoped
    /// token cannot register or relabel a server into a place it would not reach.
    pub(crate) fn may_place(
        &self,
        actor: &Actor,
        name: &str,
        labels: &Labels,
    ) -> Result<(), Error> {
        match &actor.access.scope {
            Some(scope) if !scope.matches(labels) => Err(Error::Forbidden(format!(
                "this token's scope ({scope}) would not reach server {name} with these labels"
            ))),
            _ => Ok(()),
        }
    }
}
