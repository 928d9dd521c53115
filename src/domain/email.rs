//! What an outbox row announces and where it stands (licensing-rules §6).

use serde::{Deserialize, Serialize};

/// What an outbox row announces: `license_issued` (once per license),
/// support's resend or a reissued key (one per request, see [`OutboxKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmailKind {
    LicenseIssued,
    /// Support's `mail resend`.
    Resend,
    /// The new key of `licenses reissue`.
    KeyReissued,
}

/// An outbox row's `kind` column, typed: the email and, for the kinds sent
/// on request, which request of its license it answers (`resend:2`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, diesel::AsExpression, diesel::FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum OutboxKind {
    Known {
        email: EmailKind,
        /// 1 for `license_issued`, which is sent once.
        n: i64,
    },
    /// A kind this version does not know (a newer one wrote it): shown as
    /// it is and delivered as the license's email.
    Unknown(String),
}

impl OutboxKind {
    /// The `n`-th email of `email` about a license.
    pub fn new(email: EmailKind, n: i64) -> OutboxKind {
        let n = if email == EmailKind::LicenseIssued { 1 } else { n };
        OutboxKind::Known { email, n }
    }

    pub fn email(&self) -> Option<EmailKind> {
        match self {
            OutboxKind::Known { email, .. } => Some(*email),
            OutboxKind::Unknown(_) => None,
        }
    }
}

impl std::str::FromStr for OutboxKind {
    type Err = std::convert::Infallible;

    /// Never fails: a kind this version does not know is [`OutboxKind::Unknown`].
    fn from_str(kind: &str) -> Result<Self, Self::Err> {
        let known = match kind.split_once(':') {
            None if kind == "license_issued" => Some((EmailKind::LicenseIssued, 1)),
            Some(("resend", n)) => n.parse().ok().map(|n| (EmailKind::Resend, n)),
            Some(("key_reissued", n)) => n.parse().ok().map(|n| (EmailKind::KeyReissued, n)),
            _ => None,
        };
        Ok(match known {
            Some((email, n)) => OutboxKind::Known { email, n },
            None => OutboxKind::Unknown(kind.to_owned()),
        })
    }
}

impl std::fmt::Display for OutboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            OutboxKind::Known {
                email: EmailKind::LicenseIssued,
                ..
            } => "license_issued".to_owned(),
            OutboxKind::Known {
                email: EmailKind::Resend,
                n,
            } => format!("resend:{n}"),
            OutboxKind::Known {
                email: EmailKind::KeyReissued,
                n,
            } => format!("key_reissued:{n}"),
            OutboxKind::Unknown(kind) => kind.clone(),
        };
        f.pad(&text)
    }
}

impl Serialize for OutboxKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Where one row of the email outbox stands (licensing-rules §6). Stored as
/// its snake_case name.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumIter,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum EmailStatus {
    /// To send (or being sent under a lease).
    Pending,
    Sent,
    /// Given up after the configured attempts.
    Failed,
    /// The license has no customer address: nothing to send, ever.
    NoRecipient,
    /// Issued silently: the purchase predates `--mail-since`. `mail resend`
    /// still sends it.
    Skipped,
}

impl EmailStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}
