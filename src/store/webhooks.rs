//! Webhooks and their deliveries: saved, listed, claimed, settled, redelivered (the rows
//! and the outbox that writes deliveries: `outbox`).

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::outbox::{DeliveryRow, WebhookRow};
use super::runs::{open_env, seal_env};
use super::schema::{webhook_deliveries, webhooks};
use super::{Attempt, Store, StoreError, conflict_on_unique};
use crate::domain::Micros;

fn secret_aad(id: &str) -> String {
    format!("webhooks/{id}/secret")
}

named_rows!(
    "webhook",
    webhooks,
    WebhookRow,
    insert_webhook,
    get_webhook,
    list_webhooks,
    update_webhook
);

impl Store {
    /// Seal a webhook's signing secret.
    pub fn seal_webhook_secret(&self, id: &str, secret: &str) -> Result<Vec<u8>, StoreError> {
        let map = BTreeMap::from([("secret".to_string(), secret.to_string())]);
        seal_env(&self.keyring, &secret_aad(id), &map)
    }

    /// A webhook's signing secret, opened (none: deliveries are not signed).
    pub fn webhook_secret(&self, row: &WebhookRow) -> Result<Option<String>, StoreError> {
        let mut map = open_env(
            &self.keyring,
            &secret_aad(&row.id),
            row.sealed_secret.as_deref(),
        )?;
        Ok(map.remove("secret"))
    }

    /// Delete a webhook and its deliveries.
    pub async fn delete_webhook(&self, id: String) -> Result<(), StoreError> {
        self.run(move |conn| {
            super::write_tx(conn, |conn| {
                diesel::delete(
                    webhook_deliveries::table.filter(webhook_deliveries::webhook_id.eq(&id)),
                )
                .execute(conn)?;
                let n = diesel::delete(webhooks::table.find(&id)).execute(conn)?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
        })
        .await
    }

    /// A webhook's last `limit` deliveries, newest first.
    pub async fn list_deliveries(
        &self,
        webhook_id: String,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.run(move |conn| {
            Ok(webhook_deliveries::table
                .filter(webhook_deliveries::webhook_id.eq(&webhook_id))
                .order((
                    webhook_deliveries::created_at.desc(),
                    webhook_deliveries::id.desc(),
                ))
                .limit(limit)
                .select(DeliveryRow::as_select())
                .load(conn)?)
        })
        .await
    }

    /// Deliveries due now and not claimed, oldest first (at most `limit`).
    pub async fn due_deliveries(&self, limit: i64) -> Result<Vec<DeliveryRow>, StoreError> {
        self.run(move |conn| {
            let now = Micros::now().0;
            Ok(webhook_deliveries::table
                .filter(webhook_deliveries::status.eq("pending"))
                .filter(webhook_deliveries::next_attempt_at.le(now))
                .filter(
                    webhook_deliveries::claimed_until
                        .is_null()
                        .or(webhook_deliveries::claimed_until.lt(now)),
                )
                .order(webhook_deliveries::next_attempt_at)
                .limit(limit)
                .select(DeliveryRow::as_select())
                .load(conn)?)
        })
        .await
    }

    /// Claim a due delivery until `until`; `true` for the one process that did.
    pub async fn claim_delivery(&self, id: String, until: i64) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let now = Micros::now().0;
            let n = diesel::update(
                webhook_deliveries::table
                    .find(&id)
                    .filter(webhook_deliveries::status.eq("pending"))
                    .filter(webhook_deliveries::next_attempt_at.le(now))
                    .filter(
                        webhook_deliveries::claimed_until
                            .is_null()
                            .or(webhook_deliveries::claimed_until.lt(now)),
                    ),
            )
            .set(webhook_deliveries::claimed_until.eq(Some(until)))
            .execute(conn)?;
            Ok(n == 1)
        })
        .await
    }

    /// Fix a delivery's body (at its first attempt).
    pub async fn set_delivery_body(&self, id: String, body: String) -> Result<(), StoreError> {
        self.run(move |conn| {
            diesel::update(
                webhook_deliveries::table
                    .find(&id)
                    .filter(webhook_deliveries::body.is_null()),
            )
            .set(webhook_deliveries::body.eq(Some(body)))
            .execute(conn)?;
            Ok(())
        })
        .await
    }

    /// Record an attempt and release the claim.
    pub async fn settle_delivery(&self, id: String, attempt: Attempt) -> Result<(), StoreError> {
        self.run(move |conn| {
            let status = match (&attempt.error, attempt.retry_at) {
                (None, _) => "delivered",
                (Some(_), Some(_)) => "pending",
                (Some(_), None) => "failed",
            };
            diesel::update(webhook_deliveries::table.find(&id))
                .set((
                    webhook_deliveries::status.eq(status),
                    webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
                    webhook_deliveries::last_status_code.eq(attempt.status_code),
                    webhook_deliveries::last_error.eq(attempt.error),
                    webhook_deliveries::next_attempt_at
                        .eq(attempt.retry_at.unwrap_or(Micros::now().0)),
                    webhook_deliveries::claimed_until.eq(None::<i64>),
                ))
                .execute(conn)?;
            Ok(())
        })
        .await
    }

    /// Make a delivery pending again, due now, with its attempts counted afresh.
    pub async fn redeliver(
        &self,
        webhook_id: String,
        id: String,
    ) -> Result<DeliveryRow, StoreError> {
        self.run(move |conn| {
            let n = diesel::update(
                webhook_deliveries::table
                    .find(&id)
                    .filter(webhook_deliveries::webhook_id.eq(&webhook_id)),
            )
            .set((
                webhook_deliveries::status.eq("pending"),
                webhook_deliveries::attempts.eq(0),
                webhook_deliveries::next_attempt_at.eq(Micros::now().0),
                webhook_deliveries::claimed_until.eq(None::<i64>),
            ))
            .execute(conn)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(webhook_deliveries::table
                .find(&id)
                .select(DeliveryRow::as_select())
                .first(conn)?)
        })
        .await
    }
}
