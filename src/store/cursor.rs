//! Named cursors of an account, e.g. the Events API cursor of incremental runs.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::Store;
use crate::schema::sync_state;

impl Store {
    /// The name a cursor is stored under: `name` for the key's own account,
    /// `name:acct_...` for another.
    fn cursor_name(&self, name: &str) -> String {
        match &self.account {
            None => name.to_owned(),
            Some(account) => format!("{name}:{account}"),
        }
    }

    /// This account's cursor `name`.
    pub fn cursor(&self, name: &str) -> Result<Option<(String, DateTime<Utc>)>> {
        let mut conn = self.conn()?;
        sync_state::table
            .find(self.cursor_name(name))
            .select((sync_state::value, sync_state::updated_at))
            .first(&mut conn)
            .optional()
            .context("reading the sync cursor")
    }

    pub fn set_cursor(&self, name: &str, value: &str) -> Result<()> {
        let mut conn = self.conn()?;
        diesel::insert_into(sync_state::table)
            .values((sync_state::name.eq(self.cursor_name(name)), sync_state::value.eq(value)))
            .on_conflict(sync_state::name)
            .do_update()
            .set((sync_state::value.eq(value), sync_state::updated_at.eq(diesel::dsl::now)))
            .execute(&mut conn)
            .context("storing the sync cursor")?;
        Ok(())
    }
}
