//! The names of change: what a plan does, what an operator did, what a
//! ledger row records, and how runs are named and end.

use serde::{Deserialize, Serialize};

/// The kind of a reconcile run, as reports, the `runs` table and metrics name it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::AsRefStr,
    strum::EnumString,
    strum::Display,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum RunMode {
    Full,
    Incremental,
    Since,
}

/// How a run ended (`running` until it does, or forever if it was killed
/// and no later run has closed it yet).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::AsRefStr,
    strum::EnumString,
    strum::Display,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum RunOutcome {
    Running,
    Succeeded,
    Failed,
}

/// What an operator did to a license by hand; the ledger's `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OperatorAction {
    Revoke,
    Suspend,
    Pin,
    Release,
    Reissue,
    /// Freed a license's machine seats (`licenses deactivate`).
    Deactivate,
}

impl OperatorAction {
    pub const ALL: [OperatorAction; 6] = [
        OperatorAction::Revoke,
        OperatorAction::Suspend,
        OperatorAction::Pin,
        OperatorAction::Release,
        OperatorAction::Reissue,
        OperatorAction::Deactivate,
    ];

    /// The ledger's `action` (distinct from the actions of runs).
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Revoke => "operator_revoke",
            OperatorAction::Suspend => "operator_suspend",
            OperatorAction::Pin => "operator_pin",
            OperatorAction::Release => "operator_release",
            OperatorAction::Reissue => "operator_reissue",
            OperatorAction::Deactivate => "operator_deactivate",
        }
    }

    /// The command's name, as the CLI and its JSON output spell it.
    pub fn command(self) -> &'static str {
        match self {
            OperatorAction::Revoke => "revoke",
            OperatorAction::Suspend => "suspend",
            OperatorAction::Pin => "pin",
            OperatorAction::Release => "release",
            OperatorAction::Reissue => "reissue",
            OperatorAction::Deactivate => "deactivate",
        }
    }
}

/// A ledger row's `action`: a change a run made, or what an operator did
/// by hand (`operator_revoke`, ...). Stored as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::AsExpression, diesel::FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum LedgerAction {
    Run(ActionKind),
    Operator(OperatorAction),
}

impl LedgerAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            LedgerAction::Run(action) => action.as_str(),
            LedgerAction::Operator(action) => action.as_str(),
        }
    }
}

impl AsRef<str> for LedgerAction {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for LedgerAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LedgerAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let run = ActionKind::ALL.into_iter().map(LedgerAction::Run);
        let operator = OperatorAction::ALL.into_iter().map(LedgerAction::Operator);
        run.chain(operator)
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown ledger action `{s}`"))
    }
}

impl Serialize for LedgerAction {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The kinds of change a plan can make (cli.md "A plan").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Issue,
    Extend,
    Shorten,
    Suspend,
    Reinstate,
    Expire,
    Revoke,
    Update,
}

impl ActionKind {
    pub const ALL: [ActionKind; 8] = [
        ActionKind::Issue,
        ActionKind::Extend,
        ActionKind::Shorten,
        ActionKind::Suspend,
        ActionKind::Reinstate,
        ActionKind::Expire,
        ActionKind::Revoke,
        ActionKind::Update,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Issue => "issue",
            ActionKind::Extend => "extend",
            ActionKind::Shorten => "shorten",
            ActionKind::Suspend => "suspend",
            ActionKind::Reinstate => "reinstate",
            ActionKind::Expire => "expire",
            ActionKind::Revoke => "revoke",
            ActionKind::Update => "update",
        }
    }

    /// The key of this action in the report's `counts` object.
    pub fn count_key(self) -> &'static str {
        match self {
            ActionKind::Issue => "issued",
            ActionKind::Extend => "extended",
            ActionKind::Shorten => "shortened",
            ActionKind::Suspend => "suspended",
            ActionKind::Reinstate => "reinstated",
            ActionKind::Expire => "expired",
            ActionKind::Revoke => "revoked",
            ActionKind::Update => "updated",
        }
    }
}
