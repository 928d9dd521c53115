//! `licensync migrate`: apply pending migrations and exit.

use anyhow::Result;

use crate::config::Config;
use crate::db::OpenDatabase;

pub fn run(config: &Config) -> Result<()> {
    let db = OpenDatabase::open(&config.database)?;
    let applied = db.store.migrate()?;
    if applied.is_empty() {
        println!("database is up to date");
    } else {
        println!("applied {} migration(s): {}", applied.len(), applied.join(", "));
    }
    Ok(())
}
