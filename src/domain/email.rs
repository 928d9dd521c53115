//! What an outbox row announces and where it stands (licensing-rules §6).

use serde::{Deserialize, Serialize};

/// What an outbox row announces; its `kind` column is `license_issued`
/// (once per license), `resend:<n>` or `key_reissued:<n>` (one per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmailKind {
    LicenseIssued,
    /// Support's `mail resend`.
    Resend,
    /// The new key of `licenses reissue`.
    KeyReissued,
}

impl EmailKind {
    /// The kind of an outbox row's `kind` column; `None` for one this version does not know.
    pub fn of(kind: &str) -> Option<EmailKind> {
        let series = kind.split_once(':').map_or(kind, |(series, _)| series);
        match (series, kind.contains(':')) {
            ("license_issued", false) => Some(EmailKind::LicenseIssued),
            ("resend", true) => Some(EmailKind::Resend),
            ("key_reissued", true) => Some(EmailKind::KeyReissued),
            _ => None,
        }
    }

    /// The `kind` column of the `n`-th email of this kind of a license
    /// (`n` is ignored for `license_issued`, which is sent once).
    pub fn column(self, n: i64) -> String {
        match self {
            EmailKind::LicenseIssued => "license_issued".to_owned(),
            EmailKind::Resend => format!("resend:{n}"),
            EmailKind::KeyReissued => format!("key_reissued:{n}"),
        }
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
