//! `tally replay --swap` against a running Tally: the rebuilt tables take the place of the
//! live ones while transactions keep coming, and afterwards every accepted transaction has
//! ended once, every balance is what was added, a read row damaged by hand before the swap is
//! repaired, the live tables still equal a replay of the log, and `tally verify`, run beside
//! the live Tally, finds nothing. Refused swaps change nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tally_tests::{Backend, TestApp, User, add_money, on_both_backends, username};

/// Users submitting at once while the swap runs.
const WRITERS: usize = 4;

/// What one writer submitted and saw accepted, in cents.
struct Written {
    user: User,
    accepted: Vec<String>,
    cents: i64,
}

/// Adds 1.00 to the writer's account again and again until `stop`, keeping what was accepted.
async fn write_until(app: Arc<TestApp>, user: User, stop: Arc<AtomicBool>) -> Result<Written> {
    let mut accepted = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let submitted = app.submit(&user, &add_money("1.00")).await?;
        let id = submitted["transactionId"]
            .as_str()
            .context("no transaction id")?;
        accepted.push(id.to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cents = 100 * i64::try_from(accepted.len())?;
    Ok(Written {
        user,
        accepted,
        cents,
    })
}

/// A user with an account that 25.00 was added to, final.
async fn funded_user(app: &TestApp, prefix: &str) -> Result<User> {
    let user = app.signup_and_login(&username(prefix)).await?;
    app.open_account(&user, "USD").await?;
    let added = app.submit(&user, &add_money("25.00")).await?;
    let id = added["transactionId"]
        .as_str()
        .context("no transaction id")?;
    app.wait_final(&user, id).await?;
    Ok(user)
}

/// Waits until the read store shows `expected` as the user's available balance.
async fn wait_balance(app: &TestApp, user: &User, expected: &str) -> Result<()> {
    let mut last = serde_json::Value::Null;
    for _ in 0..600 {
        last = app.balance(user).await?;
        if last["availableBalance"] == expected {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the balance never became {expected}: {last}")
}

fn dollars(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

on_both_backends!(
    a_swap_under_load_repairs_the_read_tables_and_loses_nothing,
    a_swap_into_the_live_store_itself_is_refused_and_changes_nothing,
);

async fn a_swap_under_load_repairs_the_read_tables_and_loses_nothing(
    backend: Backend,
) -> Result<()> {
    let app = Arc::new(TestApp::spawn_on(backend).await?);
    // A quiet account whose balance row is damaged by hand: no later event rewrites it, so
    // only the swap can repair it.
    let quiet = funded_user(&app, "swapquiet").await?;
    wait_balance(&app, &quiet, "25.00").await?;
    let damage = format!(
        "UPDATE accounts SET balance = '2500.00', available = '2500.00' \
         WHERE account_id = '{}'",
        quiet.uid
    );
    assert_eq!(app.execute_on_read_store(&damage).await?, 1);
    assert_eq!(app.balance(&quiet).await?["availableBalance"], "2500.00");

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let user = app.signup_and_login(&username("swapwriter")).await?;
        app.open_account(&user, "USD").await?;
        writers.push(tokio::spawn(write_until(
            Arc::clone(&app),
            user,
            Arc::clone(&stop),
        )));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let scratch = app.scratch_store().await?;
    let live_url = app.live_store_url();
    let swapping = {
        let app = Arc::clone(&app);
        let target = scratch.url.clone();
        tokio::task::spawn_blocking(move || {
            app.replay_into(&target, &["--compare-with", &live_url, "--swap"])
        })
    };
    let (code, swapped) = swapping.await??;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Relaxed);

    assert_eq!(
        code, 1,
        "the damaged row differs from the replay: {swapped}"
    );
    let difference = format!("DIFF accounts [account_id={}] balance", quiet.uid);
    assert!(swapped.contains(&difference), "{swapped}");
    assert!(
        swapped.contains("swapped            generation 1"),
        "{swapped}"
    );
    assert_eq!(app.balance(&quiet).await?["availableBalance"], "25.00");

    let mut submitted = 0;
    for writer in writers {
        let written = writer.await??;
        anyhow::ensure!(
            !written.accepted.is_empty(),
            "a writer got nothing accepted"
        );
        submitted += written.accepted.len();
        for id in &written.accepted {
            let ended = app.wait_final(&written.user, id).await?;
            assert_eq!(ended["transactionStatus"], "SUCCESSFUL", "{ended}");
        }
        wait_balance(&app, &written.user, &dollars(written.cents)).await?;
    }
    assert!(
        submitted > WRITERS,
        "the load was too thin to mean anything"
    );

    let (code, compared) = app.replay_compared()?;
    assert_eq!(code, 0, "the live tables differ from a replay: {compared}");
    assert!(compared.contains("rows differing     0"), "{compared}");
    // The full audit agrees, run beside the live Tally on either backend.
    let audit = app.run_tally("verify", app.data_dir.path(), &[])?;
    let report = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(audit.status.code(), Some(0), "{report}");
    assert!(report.contains("verdict            CLEAN"), "{report}");
    Ok(())
}

async fn a_swap_into_the_live_store_itself_is_refused_and_changes_nothing(
    backend: Backend,
) -> Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = funded_user(&app, "swapself").await?;
    wait_balance(&app, &user, "25.00").await?;
    let live_url = app.live_store_url();
    let data_dir = app.data_dir.path();

    let into_itself = app.run_tally_on_database(
        "replay",
        data_dir,
        &live_url,
        &["--compare-with", &live_url, "--swap"],
    )?;
    let without_live = app.run_tally_on_database(
        "replay",
        data_dir,
        &app.scratch_store().await?.url,
        &["--swap"],
    )?;

    assert_eq!(into_itself.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&into_itself.stderr);
    assert!(stderr.contains("names the live store"), "{stderr}");
    assert_eq!(without_live.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&without_live.stderr);
    assert!(stderr.contains("--compare-with"), "{stderr}");
    assert_eq!(app.balance(&user).await?["availableBalance"], "25.00");
    let (code, compared) = app.replay_compared()?;
    assert_eq!(code, 0, "{compared}");
    Ok(())
}

/// On the embedded default, a mistyped path is refused before anything is created: a data
/// directory with no log in it, and a live store that does not exist.
#[tokio::test]
async fn a_replay_of_a_missing_log_or_against_a_missing_store_creates_nothing() -> Result<()> {
    let app = TestApp::spawn_on(Backend::Embedded).await?;
    let elsewhere = tempfile::tempdir()?;
    let no_log = elsewhere.path().join("no-such-data-dir");
    let rebuilt = elsewhere.path().join("rebuilt.db");
    let rebuilt_url = format!("sqlite://{}", rebuilt.display());

    let missing_log = app.run_tally_on_database("replay", &no_log, &rebuilt_url, &[])?;
    assert_eq!(missing_log.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing_log.stderr);
    assert!(stderr.contains("no event log at"), "{stderr}");
    assert!(!no_log.exists(), "the missing data directory was created");

    let missing_live = elsewhere.path().join("no-such-live.db");
    let missing_live = format!("sqlite://{}", missing_live.display());
    let against = app.run_tally_on_database(
        "replay",
        app.data_dir.path(),
        &rebuilt_url,
        &["--compare-with", &missing_live],
    )?;
    assert_eq!(against.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&against.stderr);
    assert!(stderr.contains("--compare-with"), "{stderr}");
    assert!(!rebuilt.exists(), "the rebuilt store was created");
    Ok(())
}
