//! The Stripe adapter: pages Stripe through async-stripe's request builders
//! and types over licensync's own transport, and hands out plain `domain`
//! facts and `catalog` records. No Stripe type leaves this module.
//!
//! - `key`: the API key (never shown unmasked) and `redact` for free text.
//! - `transport`: the wire policy (pooling, retries, rate ceiling, timeouts,
//!   request counting).
//! - `source`: what licensync reads from Stripe, page by page.

mod error;
mod key;
mod source;
mod transport;

#[cfg(test)]
mod proptests;

pub use error::StripeError;
pub use key::{ApiKey, InvalidApiKey, redact};
pub use source::{
    CreatedRange, EventFact, GrantPage, InvoiceItemFact, InvoiceItemsPage, Page, RELEVANT_EVENT_TYPES, Span,
    StripeSource,
};
pub use transport::{DEFAULT_API_BASE, RateCeiling, StripeConfig, Transport};
