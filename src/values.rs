//! The value parsers of the command line: clap types every flag with them
//! once (durations, timestamps, cron schedules, URLs, mailboxes), so that
//! `config` and the commands never parse a string again.
//!
//! Below `settings`, `config` and `cmd`, which all import it; it imports
//! only the types it produces.

use std::ffi::OsStr;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::builder::{StringValueParser, TypedValueParser};
use clap::error::ErrorKind;
use lettre::message::Mailbox;

use crate::domain::LicenseStatus;
use crate::logging::LogFormat;
use crate::mail::parse_mailbox;
use crate::secret::redact;

/// A clap value parser whose error is the parse function's own message,
/// which names the flag and its variable (`names`) and says how to fix it.
/// clap's usual "invalid value '...' for ..." would not name the variable,
/// and would quote the raw value unredacted (a URL can hold a password).
#[derive(Clone)]
pub struct Setting<T> {
    names: &'static str,
    parse: fn(&str, &str) -> Result<T>,
}

impl<T> Setting<T> {
    pub const fn new(names: &'static str, parse: fn(&str, &str) -> Result<T>) -> Self {
        Setting { names, parse }
    }
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Setting<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> std::result::Result<T, clap::Error> {
        let value = StringValueParser::new().parse_ref(cmd, arg, value)?;
        (self.parse)(&value, self.names).map_err(|e| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("{}\n", redact(&format!("{e:#}")))).with_cmd(cmd)
        })
    }
}

/// A setting that may be given blank (`LICENSYNC_LOG_FORMAT=` in an env
/// file): blank means unset, as if it were not given at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaybeBlank<T>(pub Option<T>);

/// `30s`, `15m`, `24h`, `7d` (and the other forms humantime reads).
pub fn parse_duration(value: &str, setting: &str) -> Result<Duration> {
    humantime::parse_duration(value.trim())
        .map_err(|e| anyhow!("{setting}: `{value}` is not a duration ({e}); write it like `30s`, `15m`, `24h` or `7d`"))
}

/// RFC 3339, or `YYYY-MM-DD` meaning midnight UTC.
pub fn parse_timestamp(value: &str, setting: &str) -> Result<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    bail!(
        "{setting}: `{value}` is not a time; write RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01, midnight UTC)"
    )
}

/// clap `value_parser` for timestamps in clap's own error format:
/// RFC 3339, or `YYYY-MM-DD` (midnight UTC).
pub fn time_arg(value: &str) -> std::result::Result<DateTime<Utc>, String> {
    parse_timestamp(value, "value").map_err(|e| e.to_string())
}

/// A whole number above 0.
pub fn parse_positive(value: &str, setting: &str) -> Result<u32> {
    match value.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{setting}: `{value}` is not a whole number above 0"),
    }
}

/// An http(s) base URL, normalised without a trailing `/`.
pub fn parse_http_url(value: &str, setting: &str) -> Result<String> {
    let parsed = url::Url::parse(value.trim()).map_err(|e| {
        anyhow!(
            "{setting}: `{}` is not a URL ({e}); e.g. https://api.stripe.com",
            redact(value)
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("{setting}: `{}` must be an http:// or https:// URL", redact(value));
    }
    Ok(value.trim().trim_end_matches('/').to_owned())
}

/// `text` or `json` in any case; blank: the default for the terminal.
pub fn parse_log_format(value: &str, setting: &str) -> Result<MaybeBlank<LogFormat>> {
    Ok(MaybeBlank(match value.to_ascii_lowercase().as_str() {
        "" => None,
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        other => bail!("{setting} must be `text` or `json`, not `{other}`"),
    }))
}

/// An email address with an optional name; the error names `setting`.
pub fn parse_mailbox_arg(value: &str, setting: &str) -> Result<Mailbox> {
    parse_mailbox(setting, value)
}

/// [`parse_mailbox_arg`], blank meaning unset.
pub fn parse_optional_mailbox(value: &str, setting: &str) -> Result<MaybeBlank<Mailbox>> {
    if value.trim().is_empty() {
        return Ok(MaybeBlank(None));
    }
    parse_mailbox(setting, value).map(|m| MaybeBlank(Some(m)))
}

/// A license status, in any case.
pub fn parse_status(value: &str, setting: &str) -> Result<LicenseStatus> {
    LicenseStatus::parse(&value.to_ascii_lowercase())
        .ok_or_else(|| anyhow!("{setting} must be one of active, suspended, expired, revoked, not `{value}`"))
}

/// A cron schedule as given (for the logs) and as read.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    schedule: cron::Schedule,
}

impl Schedule {
    /// The expression as it was given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The next tick after now, if the schedule has one.
    pub fn next(&self) -> Option<DateTime<Utc>> {
        self.schedule.upcoming(Utc).next()
    }

    /// The time between the next two ticks after `now`: the period a
    /// health check measures in (`None` when fewer than two are left).
    pub fn period(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        let mut ticks = self.schedule.after(&now);
        let first = ticks.next()?;
        Some(ticks.next()? - first)
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.expression)
    }
}

/// Reads a cron expression: the `cron` crate's form with seconds
/// (`0 */15 * * * *`), or the classic five fields of crontab
/// (`*/15 * * * *`), which run at second 0.
pub fn parse_schedule(expression: &str, setting: &str) -> Result<Schedule> {
    let trimmed = expression.trim();
    let fields = trimmed.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {trimmed}")
    } else {
        trimmed.to_owned()
    };
    let schedule = full.parse::<cron::Schedule>().map_err(|e| {
        anyhow!(
            "{setting}: `{expression}` is not a cron expression ({e}); \
             write e.g. `*/15 * * * *` (every 15 minutes) or `0 */15 * * * *` (with seconds)"
        )
    })?;
    Ok(Schedule {
        expression: expression.to_owned(),
        schedule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_of_the_contract_parse() {
        for (text, secs) in [("30s", 30), ("15m", 900), ("24h", 86_400), ("7d", 604_800)] {
            assert_eq!(parse_duration(text, "--grace").unwrap(), Duration::from_secs(secs));
        }
    }

    #[test]
    fn a_malformed_duration_names_the_setting_and_the_fix() {
        let err = parse_duration("soon", "--grace / LICENSYNC_GRACE")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--grace / LICENSYNC_GRACE") && err.contains("24h"),
            "{err}"
        );
    }

    #[test]
    fn timestamps_accept_rfc3339_and_dates_at_midnight_utc() {
        assert_eq!(
            parse_timestamp("2026-11-01", "--since").unwrap().to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_timestamp("2026-11-01T10:00:00+02:00", "--since")
                .unwrap()
                .to_rfc3339(),
            "2026-11-01T08:00:00+00:00"
        );
        assert!(parse_timestamp("yesterday", "--since").is_err());
    }

    #[test]
    fn schedules_take_five_or_six_fields() {
        let five = parse_schedule("*/15 * * * *", "--schedule").unwrap();
        assert_eq!(five.expression(), "*/15 * * * *");
        assert!(five.next().is_some());
        assert!(parse_schedule("0 */15 * * * *", "--schedule").is_ok());
        let err = parse_schedule("bad cron", "--schedule / LICENSYNC_SCHEDULE")
            .unwrap_err()
            .to_string();
        assert!(err.contains("LICENSYNC_SCHEDULE") && err.contains("*/15"), "{err}");
    }
}
