//! `daemon`: a database that is down when the daemon starts is tried
//! again at each tick; the daemon serves and runs once it opens. The real
//! binary and a real PostgreSQL, on the webhook tests' harness.

use std::time::Duration;

use diesel::prelude::*;

use super::webhooks::{NEW_SECRET, start, until};
use super::{N, world};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_before_its_database_waits_for_it() {
    let w = world().await;
    // The daemon's database does not exist yet: every attempt to open it
    // fails until it is created, as while PostgreSQL is still starting.
    let later = format!("{}_later", w.db.name);
    let url = w.db.url.replace(&w.db.name, &later);
    let admin = w.db.url.replace(&w.db.name, "postgres");
    let creator = {
        let (admin, later) = (admin.clone(), later.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2500));
            let mut conn = PgConnection::establish(&admin).unwrap();
            diesel::sql_query(format!("CREATE DATABASE {later}"))
                .execute(&mut conn)
                .unwrap();
        })
    };
    // It serves once the database opens (this waits for it).
    let daemon = start(
        &url,
        &w.fake,
        "* * * * * *",
        &[("LICENSYNC_WEBHOOK_SECRET", NEW_SECRET)],
        None,
    );
    creator.join().unwrap();
    let licenses = || {
        diesel::sql_query("SELECT count(*) AS n FROM licenses")
            .load::<N>(&mut PgConnection::establish(&url).unwrap())
            .map(|r| r[0].n)
            .unwrap_or(0)
    };
    until("the first run after the database opened", || licenses() == 2).await;
    assert_eq!(daemon.request("GET", "/healthz", b"", None).await.0, 200);
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let failed = log
        .lines()
        .filter(|line| line.contains("run failed; the daemon goes on") && line.contains("does not exist"))
        .count();
    assert!(
        failed >= 2,
        "each tick before the database existed failed and was logged: {log}"
    );
    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {later} WITH (FORCE)"))
        .execute(&mut PgConnection::establish(&admin).unwrap());
}
