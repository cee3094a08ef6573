//! `tally verify` against a real Tally: an honest ledger verifies clean on both backends, and
//! each way of tampering with the embedded log or the read store by hand is reported where it
//! happened: an edited event as altered, a deleted one as missing, swapped ones as out of
//! order, a balance changed in the read store as a difference from the replay, and an edit
//! whose chain was re-hashed to hide it by the fold of the accounts' money. `tally replay
//! --compare-with` reports the same read store change row by row.

use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result};
use serde_json::Value;
use sqlx::{Connection, Row};
use tally_domain::{EventEnvelope, EventHash};
use tally_tests::{
    Backend, TestApp, User, add_money, copy_data_dir, execute_on_log, on_both_backends,
    send_airtime, username,
};

/// A user with an account, 100.00 added and 30.50 of airtime bought: eight events in the
/// account's partition, every transaction final.
async fn ledger_with_history(app: &TestApp) -> Result<User> {
    let user = app.signup_and_login(&username("audit")).await?;
    app.open_account(&user, "USD").await?;
    let added = app.submit(&user, &add_money("100.00")).await?;
    let id = added["transactionId"]
        .as_str()
        .context("no transaction id")?;
    app.wait_final(&user, id).await?;
    let airtime = app
        .submit(&user, &send_airtime("30.50", "+254712345678"))
        .await?;
    let id = airtime["transactionId"]
        .as_str()
        .context("no transaction id")?;
    let ended = app.wait_final(&user, id).await?;
    anyhow::ensure!(ended["transactionStatus"] == "SUCCESSFUL", "{ended}");
    wait_nothing_held(app, &user).await?;
    Ok(user)
}

/// Waits until the read store shows the airtime posted, so that the store is settled.
async fn wait_nothing_held(app: &TestApp, user: &User) -> Result<()> {
    for _ in 0..600 {
        if app.balance(user).await?["heldBalance"] == "0.00" {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("the airtime was never posted")
}

/// Runs `tally verify` and returns its exit code and standard output.
fn verify(app: &TestApp, data_dir: &Path, args: &[&str]) -> Result<(i32, String)> {
    let output: Output = app.run_tally("verify", data_dir, args)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code().context("tally verify was killed")?;
    anyhow::ensure!(code != 2, "tally verify could not run: {stderr}");
    Ok((code, stdout))
}

/// Stops the app on the embedded log, which is one process's at a time; on Kafka and MariaDB
/// the audit runs beside the live Tally.
fn stop_if_embedded(app: &mut TestApp) -> Result<()> {
    if app.backend == Backend::Embedded {
        let status = app.terminate()?;
        anyhow::ensure!(status.success(), "tally exited with {status}");
    }
    Ok(())
}

on_both_backends!(
    an_honest_ledger_verifies_clean,
    a_balance_changed_in_the_read_store_is_a_difference_from_the_replay,
    a_replay_compared_with_the_live_store_names_the_row_changed_by_hand,
    the_events_page_shows_each_event_chained_to_the_one_before,
);

async fn an_honest_ledger_verifies_clean(backend: Backend) -> Result<()> {
    let mut app = TestApp::spawn_on(backend).await?;
    ledger_with_history(&app).await?;
    stop_if_embedded(&mut app)?;

    let data_dir = app.data_dir.path().to_owned();
    let (code, text) = verify(&app, &data_dir, &[])?;
    let (json_code, json) = verify(&app, &data_dir, &["--format", "json"])?;

    assert_eq!(code, 0, "{text}");
    assert!(text.contains("verdict            CLEAN"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert_eq!(json_code, 0, "{json}");
    let report: Value = serde_json::from_str(&json)?;
    assert_eq!(report["failures"], 0, "{json}");
    assert_eq!(report["verdict"], "CLEAN", "{json}");
    assert_eq!(report["eventsChecked"], 8, "{json}");
    assert_eq!(report["transactions"], 2, "{json}");
    assert!(report["rowsCompared"].as_u64() > Some(8), "{json}");
    Ok(())
}

async fn a_balance_changed_in_the_read_store_is_a_difference_from_the_replay(
    backend: Backend,
) -> Result<()> {
    let mut app = TestApp::spawn_on(backend).await?;
    let user = ledger_with_history(&app).await?;
    stop_if_embedded(&mut app)?;
    let edit = format!(
        "UPDATE accounts SET balance = '1069.50' WHERE account_id = '{}'",
        user.uid
    );
    assert_eq!(app.execute_on_read_store(&edit).await?, 1);

    let data_dir = app.data_dir.path().to_owned();
    let (code, text) = verify(&app, &data_dir, &[])?;
    let (json_code, json) = verify(&app, &data_dir, &["--format", "json"])?;

    assert_eq!(code, 1, "{text}");
    assert_eq!(json_code, 1, "{json}");
    let report: Value = serde_json::from_str(&json)?;
    assert_eq!(report["verdict"], "FAILED", "{json}");
    let difference = format!(
        "FAIL read_store_differs: accounts [account_id={}] balance: live 1069.5, replayed 69.5",
        user.uid
    );
    assert!(text.contains(&difference), "{text}");
    let mismatch = format!("FAIL store_balance_mismatch account {}", user.uid);
    assert!(text.contains(&mismatch), "{text}");
    Ok(())
}

/// Where the account's events sit in the embedded log: its partition and each event's
/// offset and type, in offset order.
async fn stored_events(data_dir: &Path) -> Result<(u32, Vec<(u64, String)>)> {
    let url = format!("sqlite://{}", data_dir.join("log.db").display());
    let mut connection = sqlx::SqliteConnection::connect(&url).await?;
    let rows = sqlx::query(
        "SELECT partition_no, record_offset, payload FROM log_records \
         WHERE topic = 'tally.events' ORDER BY partition_no, record_offset",
    )
    .fetch_all(&mut connection)
    .await?;
    connection.close().await?;
    let mut events = Vec::new();
    let mut partition = None;
    for row in rows {
        let number: i64 = row.get("partition_no");
        anyhow::ensure!(
            *partition.get_or_insert(number) == number,
            "events in two partitions"
        );
        let payload: Vec<u8> = row.get("payload");
        let event: Value = serde_json::from_slice(&payload)?;
        let offset: i64 = row.get("record_offset");
        events.push((u64::try_from(offset)?, event["eventType"].to_string()));
    }
    Ok((u32::try_from(partition.context("no events")?)?, events))
}

/// The offset of the first event of `event_type`.
fn offset_of(events: &[(u64, String)], event_type: &str) -> Result<u64> {
    let quoted = format!("\"{event_type}\"");
    let found = events.iter().find(|(_, found)| *found == quoted);
    found
        .map(|(offset, _)| *offset)
        .with_context(|| format!("no {event_type} in {events:?}"))
}

/// A stopped embedded Tally with history, and the partition and events of its account.
async fn stopped_embedded_ledger() -> Result<(TestApp, u32, Vec<(u64, String)>)> {
    let mut app = TestApp::spawn_on(Backend::Embedded).await?;
    ledger_with_history(&app).await?;
    stop_if_embedded(&mut app)?;
    let (partition, events) = stored_events(app.data_dir.path()).await?;
    anyhow::ensure!(events.len() == 8, "{events:?}");
    Ok((app, partition, events))
}

#[tokio::test]
async fn an_event_edited_deleted_or_swapped_in_the_log_is_reported_where_it_was() -> Result<()> {
    let (app, partition, events) = stopped_embedded_ledger().await?;
    let where_ = |offset| format!("tally.events partition {partition} offset {offset}");
    let row = |offset| {
        format!(
            "topic = 'tally.events' AND partition_no = {partition} AND record_offset = {offset}"
        )
    };

    // An amount raised in place.
    let credited = offset_of(&events, "AccountCredited")?;
    let edited = copy_data_dir(app.data_dir.path())?;
    let raise = format!(
        "UPDATE log_records SET payload = CAST(replace(CAST(payload AS TEXT), \
         '\"amount\":\"100.00\"', '\"amount\":\"1000.00\"') AS BLOB) WHERE {}",
        row(credited)
    );
    execute_on_log(edited.path(), &[raise]).await?;
    let (code, text) = verify(&app, edited.path(), &[])?;
    assert_eq!(code, 1, "{text}");
    let altered = format!("FAIL event_altered {}", where_(credited));
    assert!(text.contains(&altered), "{text}");

    // The reservation deleted: the event after it names a hash no event holds.
    let reserved = offset_of(&events, "FundsReserved")?;
    let deleted = copy_data_dir(app.data_dir.path())?;
    execute_on_log(
        deleted.path(),
        &[format!("DELETE FROM log_records WHERE {}", row(reserved))],
    )
    .await?;
    let (code, text) = verify(&app, deleted.path(), &[])?;
    assert_eq!(code, 1, "{text}");
    let missing = format!("FAIL event_missing {}", where_(reserved + 1));
    assert!(text.contains(&missing), "{text}");

    // The credit and the posting swapped: each lands where the other was.
    let posted = offset_of(&events, "ReservationPosted")?;
    let swapped = copy_data_dir(app.data_dir.path())?;
    let swap = [
        format!(
            "CREATE TEMP TABLE kept AS SELECT record_offset, payload FROM log_records \
             WHERE {} OR {}",
            row(credited),
            row(posted)
        ),
        format!(
            "UPDATE log_records SET payload = (SELECT payload FROM kept \
             WHERE kept.record_offset = {credited} + {posted} - log_records.record_offset) \
             WHERE {} OR {}",
            row(credited),
            row(posted)
        ),
    ];
    execute_on_log(swapped.path(), &swap).await?;
    let (code, text) = verify(&app, swapped.path(), &[])?;
    assert_eq!(code, 1, "{text}");
    for offset in [credited, posted] {
        let out_of_order = format!("FAIL event_out_of_order {}", where_(offset));
        assert!(text.contains(&out_of_order), "{text}");
    }
    assert!(!text.contains("event_altered"), "{text}");

    // The untouched original still verifies clean.
    let (code, text) = verify(&app, app.data_dir.path(), &[])?;
    assert_eq!(code, 0, "{text}");
    Ok(())
}

/// Re-links every event of the partition from the genesis hash, after `edit` changed the
/// JSON of the event at `target`, as an intruder who knows the scheme would.
async fn rehash_after_edit(
    data_dir: &Path,
    partition: u32,
    target: u64,
    edit: impl Fn(&mut Value),
) -> Result<()> {
    let url = format!("sqlite://{}", data_dir.join("log.db").display());
    let mut connection = sqlx::SqliteConnection::connect(&url).await?;
    let rows = sqlx::query(
        "SELECT record_offset, payload FROM log_records \
         WHERE topic = 'tally.events' AND partition_no = ? ORDER BY record_offset",
    )
    .bind(partition)
    .fetch_all(&mut connection)
    .await?;
    let mut head = EventHash::GENESIS;
    for row in rows {
        let offset: i64 = row.get("record_offset");
        let payload: Vec<u8> = row.get("payload");
        let mut json: Value = serde_json::from_slice(&payload)?;
        if u64::try_from(offset)? == target {
            edit(&mut json);
        }
        let mut envelope: EventEnvelope = serde_json::from_value(json)?;
        let relinked = envelope.link(head);
        head = envelope.hash.context("linked")?;
        sqlx::query(
            "UPDATE log_records SET payload = ? \
             WHERE topic = 'tally.events' AND partition_no = ? AND record_offset = ?",
        )
        .bind(relinked)
        .bind(partition)
        .bind(offset)
        .execute(&mut connection)
        .await?;
    }
    connection.close().await?;
    Ok(())
}

#[tokio::test]
async fn an_overdraft_hidden_under_a_rehashed_chain_is_found_by_the_fold() -> Result<()> {
    let (app, partition, events) = stopped_embedded_ledger().await?;
    let posted = offset_of(&events, "ReservationPosted")?;
    let forged = copy_data_dir(app.data_dir.path())?;

    // The posting takes 130.50 and says so consistently; every hash is recomputed.
    rehash_after_edit(forged.path(), partition, posted, |event| {
        event["event"]["amount"] = Value::from("130.50");
        event["event"]["balanceAfter"] = Value::from("-30.50");
    })
    .await?;
    let (code, text) = verify(&app, forged.path(), &[])?;

    assert_eq!(code, 1, "{text}");
    for chain_kind in ["event_altered", "event_missing", "event_out_of_order"] {
        assert!(!text.contains(chain_kind), "the chain holds, yet: {text}");
    }
    let overdraft =
        format!("FAIL negative_balance tally.events partition {partition} offset {posted}");
    assert!(text.contains(&overdraft), "{text}");
    Ok(())
}

async fn the_events_page_shows_each_event_chained_to_the_one_before(
    backend: Backend,
) -> Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = ledger_with_history(&app).await?;

    let path = format!("/account/{}/events?limit=100", user.uid);
    let response = app
        .request(reqwest::Method::GET, &path, Some(&user.token))
        .send()
        .await?;
    let page = tally_tests::expect_status(response, 200).await?;

    // The account is the only one in its partition, so its events are the whole chain.
    let events = page["events"].as_array().context("no events")?;
    assert_eq!(events.len(), 8, "{page}");
    let mut head = "0".repeat(64);
    for event in events {
        assert_eq!(event["previousHash"], head.as_str(), "{event}");
        let hash = event["hash"].as_str().context("no hash")?;
        assert_eq!(hash.len(), 64, "{event}");
        head = hash.to_owned();
    }
    Ok(())
}

async fn a_replay_compared_with_the_live_store_names_the_row_changed_by_hand(
    backend: Backend,
) -> Result<()> {
    let mut app = TestApp::spawn_on(backend).await?;
    let user = ledger_with_history(&app).await?;
    stop_if_embedded(&mut app)?;
    let (code, before) = app.replay_compared()?;
    let edit = format!(
        "UPDATE transactions SET status = 'FAILED' WHERE account_id = '{}' \
         AND transaction_type = 'ADD_MONEY'",
        user.uid
    );
    assert_eq!(app.execute_on_read_store(&edit).await?, 1);
    let (edited_code, after) = app.replay_compared()?;

    assert_eq!(code, 0, "{before}");
    assert!(before.contains("rows differing     0"), "{before}");
    assert_eq!(edited_code, 1, "{after}");
    let difference = "] status: live FAILED, replayed SUCCESSFUL";
    let line = (after.lines()).find(|line| line.starts_with("DIFF transactions [transaction_id="));
    assert!(
        line.is_some_and(|line| line.ends_with(difference)),
        "{after}"
    );
    assert!(after.contains("rows differing     1"), "{after}");
    Ok(())
}
