//! `EXPLAIN ANALYZE` of the queries a page (and a write-back pass) runs, with the binds production
//! gives them, so that the store tests can hold each to reading the page's
//! own rows.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;

use super::Store;
use crate::domain::{GrantKey, SourceKind};

/// A query a page runs, for [`Store::explain`].
#[doc(hidden)]
pub enum PageQuery<'a> {
    /// [`Store::licenses_for`].
    Licenses {
        grants: &'a [GrantKey],
        subscription_ids: &'a [String],
        payment_intents: &'a [String],
    },
    /// The select of [`Store::claim_due_emails_after`].
    DueEmails {
        after_id: i64,
        now: DateTime<Utc>,
        limit: i64,
    },
    /// The licenses of the rows [`Store::claim_due_emails_after`] claimed.
    ClaimedLicenses { ids: &'a [i64] },
    /// The queue rows of [`Store::due_stripe_writes`].
    DueWrites { after_id: i64, limit: i64 },
    /// The licenses of those rows' purchases.
    PurchaseLicenses { purchases: &'a [(SourceKind, String)] },
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` in front of a query, keeping its binds.
struct Explain<Q>(Q);

impl<Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>> diesel::query_builder::QueryFragment<diesel::pg::Pg>
    for Explain<Q>
{
    fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        out.push_sql("EXPLAIN (ANALYZE, FORMAT JSON) ");
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q> diesel::query_builder::QueryId for Explain<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q> diesel::query_builder::Query for Explain<Q> {
    type SqlType = diesel::sql_types::Json;
}

impl<Q> RunQueryDsl<PgConnection> for Explain<Q> {}

impl Store {
    /// `EXPLAIN (ANALYZE, FORMAT JSON)` of a query a page runs, with the
    /// binds production gives it: the store tests hold every page query to
    /// reading the page's own rows.
    #[doc(hidden)]
    pub fn explain(&self, query: PageQuery<'_>) -> Result<serde_json::Value> {
        let mut conn = self.conn()?;
        let plan = match query {
            PageQuery::Licenses {
                grants,
                subscription_ids,
                payment_intents,
            } => Explain(self.page_licenses_query(grants, subscription_ids, payment_intents)).get_result(&mut conn),
            PageQuery::DueEmails { after_id, now, limit } => {
                Explain(self.due_emails_query(after_id, now, limit)).get_result(&mut conn)
            }
            PageQuery::ClaimedLicenses { ids } => {
                Explain(super::license::licenses_by_id_query(ids.to_vec())).get_result(&mut conn)
            }
            PageQuery::DueWrites { after_id, limit } => {
                Explain(self.due_writes_query(after_id, limit)).get_result(&mut conn)
            }
            PageQuery::PurchaseLicenses { purchases } => {
                Explain(self.purchase_licenses_query(purchases)).get_result(&mut conn)
            }
        };
        plan.context("explaining a page query")
    }
}
