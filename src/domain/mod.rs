//! The plain domain vocabulary shared by every layer: what the Stripe adapter
//! reports (facts), what the license table holds (licenses), and the names of
//! the statuses and sources of the licensing rules. Nothing here knows about
//! Stripe's wire types; the enums stored in text columns only carry
//! diesel's derives (their text is strum's, read and written by
//! `store::enums`), so a status is a type everywhere and a string nowhere.

use chrono::{DateTime, Utc};

pub type Timestamp = DateTime<Utc>;

mod change;
mod email;
mod grant;
mod license;
mod terms;
mod write_back;

pub use change::*;
pub use email::*;
pub use grant::*;
pub use license::*;
pub use terms::*;
pub use write_back::*;
