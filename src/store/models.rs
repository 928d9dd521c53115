//! Row types of the license database and their conversion to the domain.
//! Text columns hold the enum names the migrations constrain them to.

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::schema::{email_outbox, license_key_history, license_ledger, licenses, runs};
use crate::domain::{ExpirationStart, GrantKey, License, LicenseState, LicenseStatus, RunMode, RunOutcome, SourceKind};

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = licenses)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct LicenseRow {
    pub id: i64,
    pub key: String,
    pub status: LicenseStatus,
    pub product_ids: Vec<Option<String>>,
    pub source_kind: SourceKind,
    pub source_id: String,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub stripe_payment_intent: Option<String>,
    pub customer_email: Option<String>,
    pub customer_name: Option<String>,
    pub quantity: i32,
    pub ip_limit: Option<i32>,
    pub hwid_limit: Option<i32>,
    pub expiration_days: Option<i32>,
    pub expiration_start: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub operator_override: Option<serde_json::Value>,
    pub product_name: Option<String>,
    pub stripe_account: Option<String>,
}

impl LicenseRow {
    pub fn into_domain(self) -> Result<License> {
        let bad = |column: &str, value: &str| anyhow!("license {} has an unknown {column} `{value}`", self.id);
        Ok(License {
            id: self.id,
            status: self.status,
            source_kind: self.source_kind,
            expiration_start: match &self.expiration_start {
                None => None,
                Some(s) => Some(ExpirationStart::parse(s).ok_or_else(|| bad("expiration_start", s))?),
            },
            operator_override: match self.operator_override {
                None => None,
                Some(value) => Some(
                    serde_json::from_value(value)
                        .map_err(|e| anyhow!("license {} has an unreadable operator_override: {e}", self.id))?,
                ),
            },
            product_ids: self.product_ids.into_iter().flatten().collect(),
            product_name: self.product_name,
            stripe_account: self.stripe_account,
            key: self.key,
            source_id: self.source_id,
            stripe_customer_id: self.stripe_customer_id,
            stripe_subscription_id: self.stripe_subscription_id,
            stripe_payment_intent: self.stripe_payment_intent,
            customer_email: self.customer_email,
            customer_name: self.customer_name,
            quantity: self.quantity,
            ip_limit: self.ip_limit,
            hwid_limit: self.hwid_limit,
            expiration_days: self.expiration_days,
            expires_at: self.expires_at,
            livemode: self.livemode,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// A license row to upsert on its natural key.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = licenses)]
pub struct NewLicenseRow {
    pub key: String,
    pub status: LicenseStatus,
    pub product_ids: Vec<Option<String>>,
    pub source_kind: SourceKind,
    pub source_id: String,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub stripe_payment_intent: Option<String>,
    pub customer_email: Option<String>,
    pub customer_name: Option<String>,
    pub quantity: i32,
    pub ip_limit: Option<i32>,
    pub hwid_limit: Option<i32>,
    pub expiration_days: Option<i32>,
    pub expiration_start: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub livemode: bool,
    /// Never creates or clears an override: on an existing row with one, its
    /// `stripe` member replaces the stored one (see `Store::write_page`).
    pub operator_override: Option<serde_json::Value>,
    pub product_name: Option<String>,
    /// Set by the store from the account it is scoped to (`Store::for_account`).
    pub stripe_account: Option<String>,
}

impl NewLicenseRow {
    pub fn new(key: String, grant: &GrantKey, state: &LicenseState) -> NewLicenseRow {
        NewLicenseRow {
            key,
            status: state.status,
            product_ids: state.product_ids.iter().cloned().map(Some).collect(),
            source_kind: grant.source_kind,
            source_id: grant.source_id.clone(),
            stripe_customer_id: state.stripe_customer_id.clone(),
            stripe_subscription_id: state.stripe_subscription_id.clone(),
            stripe_payment_intent: state.stripe_payment_intent.clone(),
            customer_email: state.customer_email.clone(),
            customer_name: state.customer_name.clone(),
            quantity: state.quantity,
            ip_limit: state.ip_limit,
            hwid_limit: state.hwid_limit,
            expiration_days: state.expiration_days,
            expiration_start: state.expiration_start.map(|s| s.as_str().to_owned()),
            expires_at: state.expires_at,
            livemode: state.livemode,
            operator_override: None,
            product_name: state.product_name.clone(),
            stripe_account: None,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = license_ledger)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct LedgerRow {
    pub id: i64,
    pub license_id: i64,
    pub run_id: Option<i64>,
    pub action: String,
    pub before: Option<serde_json::Value>,
    pub after: serde_json::Value,
    pub stripe_object: String,
    pub created_at: DateTime<Utc>,
    /// Operator rows only: why, and who.
    pub reason: Option<String>,
    pub operator: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = license_ledger)]
pub struct NewLedgerRow {
    pub license_id: i64,
    pub run_id: Option<i64>,
    pub action: String,
    pub before: Option<serde_json::Value>,
    pub after: serde_json::Value,
    pub stripe_object: String,
    pub reason: Option<String>,
    pub operator: Option<String>,
}

/// A key a reissue replaced: no longer valid.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = license_key_history)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct KeyHistoryRow {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub license_id: i64,
    pub key: String,
    pub replaced_at: DateTime<Utc>,
    pub reason: String,
    #[serde(rename = "by")]
    pub replaced_by: String,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = license_key_history)]
pub struct NewKeyHistoryRow {
    pub license_id: i64,
    pub key: String,
    pub reason: String,
    pub replaced_by: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = email_outbox)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct OutboxRow {
    pub id: i64,
    pub license_id: i64,
    pub kind: String,
    pub recipient: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub message_id: String,
    pub created_at: DateTime<Utc>,
    /// The sender session holding the row's claim, while one does.
    pub claimed_by: Option<i32>,
    /// The account of its license: its sender and templates send it.
    pub stripe_account: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = email_outbox)]
pub struct NewOutboxRow {
    pub license_id: i64,
    pub kind: String,
    pub recipient: Option<String>,
    pub status: String,
    pub stripe_account: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = runs)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct RunRow {
    pub id: i64,
    pub mode: RunMode,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: RunOutcome,
    pub counts: serde_json::Value,
    pub stripe_requests: i64,
    pub emails_sent: i32,
    pub livemode: Option<bool>,
    pub note: Option<String>,
    pub error: Option<String>,
    pub stripe_account: Option<String>,
}
