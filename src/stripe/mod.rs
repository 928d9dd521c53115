//! The Stripe adapter: pages Stripe through async-stripe's request builders
//! and types over licensync's own transport, and hands out plain `domain`
//! facts and `catalog` records. No Stripe type leaves this module.
//!
//! - `key`: the API key (never shown unmasked) and `redact` for free text.
//! - `config`: how to reach Stripe and how hard to push it.
//! - `transport`: the wire policy (pooling, retries, rate ceiling, timeouts,
//!   request counting).
//! - `source`: the reader (`StripeSource`), its fetch helpers and the page
//!   types it hands out; what it reads, page by page, is split by object:
//!   `catalog`, `subscriptions`, `checkout`, `invoices`, `reversals`, `events`.
//! - `pages`: the one path every list is read through, page by page, each
//!   object decoded on its own so that one Stripe sends outside
//!   async-stripe's types skips only itself.
//! - `metadata`: the one write, a license's keys onto its object
//!   (`--stripe-write-back`).
//! - `webhook`: Stripe's webhook signatures (a daemon's wake-ups).

mod catalog;
mod checkout;
mod config;
mod error;
mod events;
mod invoices;
mod key;
mod metadata;
mod pages;
mod reversals;
mod source;
mod subscriptions;
mod transport;
mod webhook;

pub use config::{DEFAULT_API_BASE, RateCeiling, StripeConfig};
pub use error::StripeError;
pub use events::{EventFact, RELEVANT_EVENT_TYPES};
pub use invoices::{InvoiceItemFact, InvoiceItemsPage};
pub use key::{ApiKey, InvalidApiKey, redact};
pub use source::{CreatedRange, GrantPage, Page, Span, StripeSource};
pub use transport::Transport;
pub use webhook::{
    EventHead, Refused as WebhookRefused, TOLERANCE_SECONDS as WEBHOOK_TOLERANCE_SECONDS, WebhookSecrets,
    verify as verify_webhook,
};
