//! The domain's enums as text columns: diesel reads and writes the names
//! strum gives them (the same the migrations' CHECK constraints list), so
//! no query or row spells a status out.

use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{Array, Nullable, Text};

use crate::domain::{
    EmailStatus, ExpirationStart, LedgerAction, LicenseStatus, OutboxKind, ProductIdColumn, RunMode, RunOutcome,
    SourceKind, WriteStatus, WriteTarget,
};

macro_rules! text_enum {
    ($($t:ty),* $(,)?) => {$(
        impl ToSql<Text, Pg> for $t {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.as_ref(), &mut out.reborrow())
            }
        }

        impl FromSql<Text, Pg> for $t {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                text.parse()
                    .map_err(|_| format!("unknown {} `{text}` in the database", stringify!($t)).into())
            }
        }
    )*};
}

text_enum!(
    LicenseStatus,
    SourceKind,
    RunMode,
    RunOutcome,
    EmailStatus,
    ExpirationStart,
    LedgerAction,
    WriteTarget,
    WriteStatus
);

type TextArray = Array<Nullable<Text>>;

impl FromSql<TextArray, Pg> for ProductIdColumn {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <Vec<Option<String>> as FromSql<TextArray, Pg>>::from_sql(bytes).map(ProductIdColumn)
    }
}

impl ToSql<Text, Pg> for OutboxKind {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <String as ToSql<Text, Pg>>::to_sql(&self.to_string(), &mut out.reborrow())
    }
}

impl FromSql<Text, Pg> for OutboxKind {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        Ok(text
            .parse()
            .unwrap_or_else(|never: std::convert::Infallible| match never {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `IN (...)` list of the CHECK constraint on `column` in the first
    /// migration.
    fn allowed(column: &str) -> Vec<String> {
        let sql = include_str!("../../migrations/2026-11-22-000001_create_licensing/up.sql");
        let line = sql
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{column} TEXT")))
            .unwrap_or_else(|| panic!("no column {column}"));
        let list = line.split(" IN (").nth(1).unwrap().split(')').next().unwrap();
        list.split(", ").map(|v| v.trim_matches('\'').to_owned()).collect()
    }

    fn names<T: AsRef<str>>(values: impl IntoIterator<Item = T>) -> Vec<String> {
        values.into_iter().map(|v| v.as_ref().to_owned()).collect()
    }

    #[test]
    fn every_enum_writes_exactly_the_names_its_column_allows() {
        assert_eq!(names(LicenseStatus::ALL), allowed("status"));
        assert_eq!(
            names([
                SourceKind::SubscriptionItem,
                SourceKind::CheckoutLine,
                SourceKind::InvoiceLine
            ]),
            allowed("source_kind")
        );
        assert_eq!(
            names([RunMode::Full, RunMode::Incremental, RunMode::Since]),
            allowed("mode")
        );
        assert_eq!(
            names([RunOutcome::Running, RunOutcome::Succeeded, RunOutcome::Failed]),
            allowed("outcome")
        );
        assert_eq!(
            names([ExpirationStart::Creation, ExpirationStart::Activation]),
            allowed("expiration_start")
        );
        let outbox = include_str!("../../migrations/2026-12-02-000001_mail_since_and_product_names/up.sql");
        let statuses = names(<EmailStatus as strum::IntoEnumIterator>::iter());
        let check = outbox.lines().find(|l| l.contains("CHECK (status IN")).unwrap();
        assert!(
            statuses.iter().all(|s| check.contains(&format!("'{s}'"))),
            "{statuses:?} in {check}"
        );
        assert_eq!(check.matches('\'').count(), 2 * statuses.len(), "{check}");
        for name in allowed("status") {
            assert_eq!(name.parse::<LicenseStatus>().unwrap().as_ref(), name);
        }
    }

    #[test]
    fn every_ledger_action_reads_back_as_itself() {
        use crate::domain::{ActionKind, OperatorAction};
        let run = ActionKind::ALL.map(LedgerAction::Run);
        let operator = OperatorAction::ALL.map(LedgerAction::Operator);
        for action in run.into_iter().chain(operator) {
            assert_eq!(action.as_str().parse::<LedgerAction>(), Ok(action));
        }
        assert!("operator_frobnicate".parse::<LedgerAction>().is_err());
    }
}
