//! A page of a plan written in one transaction: its licenses, their ledger
//! rows, their `license_issued` emails and their write-backs.
//!
//! Each table is written by one statement of a fixed shape, whatever the
//! page holds: the rows travel as one array per column and the statement
//! reads them back with `unnest`. diesel prepares each statement once per
//! connection. A diesel `VALUES` list is never kept prepared and writes
//! `DEFAULT` for each empty value: nearly every page was a statement of its
//! own, parsed and planned each time (`tests/page_statements.rs`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz};

use super::Store;
use super::license::NewLicenseRow;
use super::run::LOST_LOCK;
use super::stripe_write::enqueue_writes;
use crate::domain::{
    ActionKind, EmailKind, EmailStatus, ExpirationStart, GrantKey, LedgerAction, LicenseStatus, OutboxKind, SourceKind,
    Timestamp, WriteTo,
};

/// One write of the applier: a license row (new or existing, by natural
/// key), its ledger entry and, for new licenses, its outbox row.
#[derive(Debug, Clone)]
pub struct LicenseWrite {
    pub license: NewLicenseRow,
    pub action: ActionKind,
    pub before: Option<serde_json::Value>,
    pub after: serde_json::Value,
    pub stripe_object: String,
    /// Queues the license's `license_issued` email (once per license), in
    /// the state the applier decides.
    pub email: Option<EmailStatus>,
    /// `--stripe-write-back`: the Stripe object that shows the license's
    /// key, queued in the same transaction.
    pub write_back: Option<WriteTo>,
}

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub license_id: i64,
    pub key: String,
    pub grant: GrantKey,
}

/// The page's licenses, upserted on their natural key (`$1`-`$19`: one
/// array per column, `$20`: the store's account). The key is never in the
/// update set: a key never changes once issued. A run never creates,
/// clears or changes an override: when an operator changed a license's
/// override after the page was planned, its row is left alone (and not
/// returned); the next run plans it with the override as it is now.
const UPSERT_LICENSES: &str = "\
    INSERT INTO licenses (key, source_kind, source_id, status, product_ids, product_name, \
        stripe_customer_id, stripe_subscription_id, stripe_payment_intent, customer_email, customer_name, \
        quantity, ip_limit, hwid_limit, expiration_days, expiration_start, expires_at, livemode, \
        operator_override, stripe_account) \
    SELECT r.key, r.source_kind, r.source_id, r.status, r.product_ids::text[], r.product_name, \
        r.stripe_customer_id, r.stripe_subscription_id, r.stripe_payment_intent, r.customer_email, r.customer_name, \
        r.quantity, r.ip_limit, r.hwid_limit, r.expiration_days, r.expiration_start, r.expires_at, r.livemode, \
        r.operator_override, $20 \
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
        $12::int4[], $13::int4[], $14::int4[], $15::int4[], $16::text[], $17::timestamptz[], $18::bool[], \
        $19::jsonb[]) \
        AS r(key, source_kind, source_id, status, product_ids, product_name, \
        stripe_customer_id, stripe_subscription_id, stripe_payment_intent, customer_email, customer_name, \
        quantity, ip_limit, hwid_limit, expiration_days, expiration_start, expires_at, livemode, \
        operator_override) \
    ON CONFLICT (source_kind, source_id, account_key) DO UPDATE SET \
        status = excluded.status, product_ids = excluded.product_ids, \
        stripe_customer_id = excluded.stripe_customer_id, \
        stripe_subscription_id = excluded.stripe_subscription_id, \
        stripe_payment_intent = excluded.stripe_payment_intent, \
        customer_email = excluded.customer_email, customer_name = excluded.customer_name, \
        quantity = excluded.quantity, ip_limit = excluded.ip_limit, hwid_limit = excluded.hwid_limit, \
        expiration_days = excluded.expiration_days, expiration_start = excluded.expiration_start, \
        expires_at = excluded.expires_at, livemode = excluded.livemode, \
        operator_override = excluded.operator_override, product_name = excluded.product_name, \
        updated_at = now() \
    WHERE (licenses.operator_override - 'stripe') IS NOT DISTINCT FROM (excluded.operator_override - 'stripe') \
    RETURNING licenses.id, licenses.key, licenses.source_kind, licenses.source_id";

/// The page's ledger rows (`$1`, `$3`-`$6`: one array per column; `$2`: the run).
const INSERT_LEDGER: &str = "\
    INSERT INTO license_ledger (license_id, run_id, action, before, after, stripe_object) \
    SELECT r.license_id, $2, r.action, r.before, r.after, r.stripe_object \
    FROM unnest($1::bigint[], $3::text[], $4::jsonb[], $5::jsonb[], $6::text[]) \
        AS r(license_id, action, before, after, stripe_object)";

/// The page's `license_issued` emails, once per license (`$1`-`$3`: one
/// array per column; `$4`: the kind, `$5`: the store's account).
const INSERT_OUTBOX: &str = "\
    INSERT INTO email_outbox (license_id, kind, recipient, status, stripe_account) \
    SELECT r.license_id, $4, r.recipient, r.status, $5 \
    FROM unnest($1::bigint[], $2::text[], $3::text[]) AS r(license_id, recipient, status) \
    ON CONFLICT (license_id, kind) DO NOTHING";

/// A row [`UPSERT_LICENSES`] returns.
#[derive(QueryableByName)]
struct Saved {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Text)]
    source_kind: SourceKind,
    #[diesel(sql_type = Text)]
    source_id: String,
}

/// The page's license rows as [`UPSERT_LICENSES`] takes them: a column each.
#[derive(Default)]
struct LicenseColumns {
    key: Vec<String>,
    source_kind: Vec<SourceKind>,
    source_id: Vec<String>,
    status: Vec<LicenseStatus>,
    product_ids: Vec<String>,
    product_name: Vec<Option<String>>,
    stripe_customer_id: Vec<Option<String>>,
    stripe_subscription_id: Vec<Option<String>>,
    stripe_payment_intent: Vec<Option<String>>,
    customer_email: Vec<Option<String>>,
    customer_name: Vec<Option<String>>,
    quantity: Vec<i32>,
    ip_limit: Vec<Option<i32>>,
    hwid_limit: Vec<Option<i32>>,
    expiration_days: Vec<Option<i32>>,
    expiration_start: Vec<Option<ExpirationStart>>,
    expires_at: Vec<Option<Timestamp>>,
    livemode: Vec<bool>,
    operator_override: Vec<Option<serde_json::Value>>,
}

impl LicenseColumns {
    fn push(&mut self, row: &NewLicenseRow) {
        let s = &row.state;
        self.key.push(row.key.clone());
        self.source_kind.push(row.grant.source_kind);
        self.source_id.push(row.grant.source_id.clone());
        self.status.push(s.status);
        self.product_ids.push(text_array_literal(&s.product_ids));
        self.product_name.push(s.product_name.clone());
        self.stripe_customer_id.push(s.stripe_customer_id.clone());
        self.stripe_subscription_id.push(s.stripe_subscription_id.clone());
        self.stripe_payment_intent.push(s.stripe_payment_intent.clone());
        self.customer_email.push(s.customer_email.clone());
        self.customer_name.push(s.customer_name.clone());
        self.quantity.push(s.quantity);
        self.ip_limit.push(s.ip_limit);
        self.hwid_limit.push(s.hwid_limit);
        self.expiration_days.push(s.expiration_days);
        self.expiration_start.push(s.expiration_start);
        self.expires_at.push(s.expires_at);
        self.livemode.push(s.livemode);
        self.operator_override.push(row.operator_override.clone());
    }

    fn upsert(self, conn: &mut PgConnection, account: Option<&str>) -> QueryResult<Vec<Saved>> {
        diesel::sql_query(UPSERT_LICENSES)
            .bind::<Array<Text>, _>(self.key)
            .bind::<Array<Text>, _>(self.source_kind)
            .bind::<Array<Text>, _>(self.source_id)
            .bind::<Array<Text>, _>(self.status)
            .bind::<Array<Text>, _>(self.product_ids)
            .bind::<Array<Nullable<Text>>, _>(self.product_name)
            .bind::<Array<Nullable<Text>>, _>(self.stripe_customer_id)
            .bind::<Array<Nullable<Text>>, _>(self.stripe_subscription_id)
            .bind::<Array<Nullable<Text>>, _>(self.stripe_payment_intent)
            .bind::<Array<Nullable<Text>>, _>(self.customer_email)
            .bind::<Array<Nullable<Text>>, _>(self.customer_name)
            .bind::<Array<Integer>, _>(self.quantity)
            .bind::<Array<Nullable<Integer>>, _>(self.ip_limit)
            .bind::<Array<Nullable<Integer>>, _>(self.hwid_limit)
            .bind::<Array<Nullable<Integer>>, _>(self.expiration_days)
            .bind::<Array<Nullable<Text>>, _>(self.expiration_start)
            .bind::<Array<Nullable<Timestamptz>>, _>(self.expires_at)
            .bind::<Array<Bool>, _>(self.livemode)
            .bind::<Array<Nullable<Jsonb>>, _>(self.operator_override)
            .bind::<Nullable<Text>, _>(account)
            .load(conn)
    }
}

/// `items` as a PostgreSQL array literal (`{"a","b"}`), each element quoted:
/// `unnest` cannot carry an array per row, so `product_ids` travels as the
/// text of its array and is cast back in [`UPSERT_LICENSES`].
fn text_array_literal(items: &[String]) -> String {
    let mut literal = String::with_capacity(2 + items.iter().map(|i| i.len() + 3).sum::<usize>());
    literal.push('{');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in item.chars() {
            if matches!(c, '"' | '\\') {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

/// The page's ledger rows as [`INSERT_LEDGER`] takes them.
#[derive(Default)]
struct LedgerColumns {
    license_id: Vec<i64>,
    action: Vec<LedgerAction>,
    before: Vec<Option<serde_json::Value>>,
    after: Vec<serde_json::Value>,
    stripe_object: Vec<String>,
}

impl LedgerColumns {
    fn push(&mut self, license_id: i64, w: &LicenseWrite, after: serde_json::Value) {
        self.license_id.push(license_id);
        self.action.push(LedgerAction::Run(w.action));
        self.before.push(w.before.clone());
        self.after.push(after);
        self.stripe_object.push(w.stripe_object.clone());
    }

    fn insert(self, conn: &mut PgConnection, run_id: Option<i64>) -> QueryResult<()> {
        if self.license_id.is_empty() {
            return Ok(());
        }
        diesel::sql_query(INSERT_LEDGER)
            .bind::<Array<BigInt>, _>(self.license_id)
            .bind::<Nullable<BigInt>, _>(run_id)
            .bind::<Array<Text>, _>(self.action)
            .bind::<Array<Nullable<Jsonb>>, _>(self.before)
            .bind::<Array<Jsonb>, _>(self.after)
            .bind::<Array<Text>, _>(self.stripe_object)
            .execute(conn)?;
        Ok(())
    }
}

/// The page's outbox rows as [`INSERT_OUTBOX`] takes them.
#[derive(Default)]
struct OutboxColumns {
    license_id: Vec<i64>,
    recipient: Vec<Option<String>>,
    status: Vec<EmailStatus>,
}

impl OutboxColumns {
    fn push(&mut self, license_id: i64, recipient: Option<String>, status: EmailStatus) {
        self.license_id.push(license_id);
        self.recipient.push(recipient);
        self.status.push(status);
    }

    fn insert(self, conn: &mut PgConnection, account: Option<&str>) -> QueryResult<()> {
        if self.license_id.is_empty() {
            return Ok(());
        }
        diesel::sql_query(INSERT_OUTBOX)
            .bind::<Array<BigInt>, _>(self.license_id)
            .bind::<Array<Nullable<Text>>, _>(self.recipient)
            .bind::<Array<Text>, _>(self.status)
            .bind::<Text, _>(OutboxKind::new(EmailKind::LicenseIssued, 1))
            .bind::<Nullable<Text>, _>(account)
            .execute(conn)?;
        Ok(())
    }
}

impl Store {
    /// Writes one page of a plan in one transaction: one upsert of the
    /// licenses on their natural key, one insert into the ledger and one
    /// into the outbox, each of a fixed shape (see the module). A page
    /// either lands whole or not at all, but for licenses whose operator
    /// override changed after the page was planned: those are left alone
    /// and missing from the result.
    pub fn write_page(&self, run_id: Option<i64>, writes: &[LicenseWrite]) -> Result<Vec<Written>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            if !self.fence_held(conn)? {
                return Err(diesel::result::Error::QueryBuilderError(LOST_LOCK.into()));
            }
            let mut licenses = LicenseColumns::default();
            for w in writes {
                licenses.push(&w.license);
            }
            let by_grant: BTreeMap<(SourceKind, String), (i64, String)> = licenses
                .upsert(conn, self.account.as_deref())?
                .into_iter()
                .map(|s| ((s.source_kind, s.source_id), (s.id, s.key)))
                .collect();
            let mut written = Vec::with_capacity(writes.len());
            let mut ledger = LedgerColumns::default();
            let mut outbox = OutboxColumns::default();
            let mut write_back = Vec::new();
            for w in writes {
                let grant = (w.license.grant.source_kind, w.license.grant.source_id.clone());
                let Some((license_id, key)) = by_grant.get(&grant).cloned() else {
                    // Left alone: an operator changed its override meanwhile.
                    continue;
                };
                let mut after = w.after.clone();
                if let Some(obj) = after.as_object_mut() {
                    obj.insert("key".into(), serde_json::Value::String(key.clone()));
                }
                ledger.push(license_id, w, after);
                if let Some(status) = w.email {
                    outbox.push(license_id, w.license.state.customer_email.clone(), status);
                }
                write_back.extend(w.write_back.clone());
                let source_kind = grant.0;
                written.push(Written {
                    license_id,
                    key,
                    grant: GrantKey {
                        source_kind,
                        source_id: grant.1,
                    },
                });
            }
            ledger.insert(conn, run_id)?;
            outbox.insert(conn, self.account.as_deref())?;
            enqueue_writes(conn, self.account_key(), &write_back)?;
            Ok::<_, diesel::result::Error>(written)
        })
        .context("writing a page of license changes")
    }
}

#[cfg(test)]
mod tests {
    use super::text_array_literal;

    #[test]
    fn product_ids_travel_as_quoted_array_literals() {
        assert_eq!(text_array_literal(&[]), "{}");
        assert_eq!(
            text_array_literal(&["prod_1".into(), "NULL".into(), "a,b".into()]),
            r#"{"prod_1","NULL","a,b"}"#
        );
        assert_eq!(text_array_literal(&[r#"q"u\o"#.into()]), r#"{"q\"u\\o"}"#);
    }
}
