//! The decider over the embedded log: it decides commands into events, links them into each
//! partition's hash chain, and survives being fenced by rejoining its group.

use std::sync::Arc;
use std::time::Duration;

use tally_commands::decider::{self, DeciderSettings, GROUP};
use tally_commands::log::sqlite::{SqliteLog, SqliteLogSettings};
use tally_commands::log::{EventLog, Topic, TopicPartition};
use tally_commands::message::CommandEnvelope;
use tally_domain::{
    AccountId, AccountInfo, Amount, Currency, EventEnvelope, EventHash, LedgerCommand, Link,
    TransactionId,
};
use tokio::sync::watch;

/// How long a test waits for the decider; far above what deciding a few commands takes.
const WAIT: Duration = Duration::from_secs(30);

fn open_account() -> LedgerCommand {
    let info = AccountInfo::parse("Ada", "ada@example.com", "+14155552671").expect("valid");
    LedgerCommand::OpenAccount {
        info,
        billing_address: None,
        currency: Currency::USD,
    }
}

fn add_money(amount: &str) -> LedgerCommand {
    let amount = Amount::parse(amount, Currency::USD).expect("valid amount");
    LedgerCommand::AddMoney {
        transaction_id: TransactionId::new(),
        amount,
        currency: Currency::USD,
    }
}

async fn append(log: &Arc<SqliteLog>, account_id: AccountId, command: LedgerCommand) {
    let envelope = CommandEnvelope::new(account_id, None, command);
    log.append(vec![envelope.to_record()])
        .await
        .expect("append");
}

/// Waits until the account's events partition holds at least `count` records.
async fn wait_for_events(log: &Arc<SqliteLog>, account_id: AccountId, count: u64) {
    let partition = log.partition_for(&account_id.to_string());
    let events = TopicPartition {
        topic: Topic::Events,
        partition,
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while log.end_offset(events).await.expect("end offset") < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the decider did not decide in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the events partitions hold at least `count` records between them.
async fn wait_for_all_events(log: &Arc<SqliteLog>, count: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut stored = 0;
        for partition in 0..log.partition_count() {
            let events = TopicPartition {
                topic: Topic::Events,
                partition,
            };
            stored += log.end_offset(events).await.expect("end offset");
        }
        if stored >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the decider did not decide in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks that every event of every events partition links to the one before it, from the
/// genesis hash on, and returns how many events it checked.
async fn assert_chains_hold(log: &Arc<SqliteLog>) -> usize {
    let mut checked = 0;
    let mut scratch = Vec::new();
    for partition in 0..log.partition_count() {
        let events = TopicPartition {
            topic: Topic::Events,
            partition,
        };
        let mut head = EventHash::GENESIS;
        for record in log.read(events, 0, 1_000).await.expect("read events") {
            let envelope = EventEnvelope::from_json(&record.payload).expect("event");
            let link = envelope.check_link(&head, &mut scratch);
            assert_eq!(
                link,
                Link::Linked,
                "partition {partition} offset {}",
                record.offset
            );
            head = envelope.hash.expect("linked events carry their hash");
            checked += 1;
        }
    }
    checked
}

async fn stop_decider(
    stop: watch::Sender<bool>,
    running: tokio::task::JoinHandle<Result<(), decider::DecideError>>,
) {
    stop.send(true).expect("decider still listens");
    let outcome = tokio::time::timeout(WAIT, running)
        .await
        .expect("decider stops");
    outcome
        .expect("decider task")
        .expect("decider ends cleanly");
}

#[tokio::test]
async fn every_partition_chains_its_events_from_the_genesis_hash_across_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(SqliteLogSettings::new(dir.path(), 2))
        .await
        .expect("open log");
    let (stop, stopping) = watch::channel(false);
    let running = tokio::spawn(decider::run(
        log.clone(),
        DeciderSettings::default(),
        stopping,
    ));

    let accounts: Vec<AccountId> = (0..6).map(|_| AccountId::new()).collect();
    for account_id in &accounts {
        append(&log, *account_id, open_account()).await;
    }
    for account_id in &accounts {
        append(&log, *account_id, add_money("10")).await;
        wait_for_events(&log, *account_id, 1).await;
    }
    for account_id in &accounts {
        append(&log, *account_id, add_money("2.5")).await;
    }
    wait_for_all_events(&log, accounts.len() as u64 * 7).await;
    stop_decider(stop, running).await;

    assert_eq!(assert_chains_hold(&log).await, accounts.len() * 7);
}

#[tokio::test]
async fn a_fenced_decider_rejoins_and_goes_on_deciding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(SqliteLogSettings::new(dir.path(), 4))
        .await
        .expect("open log");
    let (stop, stopping) = watch::channel(false);
    let settings = DeciderSettings {
        rejoin_delay_ms: 10,
        ..DeciderSettings::default()
    };
    let running = tokio::spawn(decider::run(log.clone(), settings, stopping));

    let account_id = AccountId::new();
    append(&log, account_id, open_account()).await;
    append(&log, account_id, add_money("10")).await;
    wait_for_events(&log, account_id, 4).await;

    // Another member joins the group and leaves: the decider is fenced meanwhile.
    drop(
        log.consumer(GROUP, &[Topic::Commands])
            .await
            .expect("intruder joins"),
    );
    append(&log, account_id, add_money("5")).await;
    wait_for_events(&log, account_id, 7).await;
    stop_decider(stop, running).await;

    // The rejoined member learned the head again from the log and chained on from it.
    assert_eq!(assert_chains_hold(&log).await, 7);
}

#[tokio::test]
async fn events_committed_after_the_rebuild_are_applied_before_the_first_decision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(SqliteLogSettings::new(dir.path(), 4))
        .await
        .expect("open log");
    let (stop, stopping) = watch::channel(false);
    let running = tokio::spawn(decider::run(
        log.clone(),
        DeciderSettings::default(),
        stopping,
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A member that lost the partition had this transaction completing while the new one
    // rebuilt: its events land after the rebuild read the partition.
    let account_id = AccountId::new();
    let mut ledger = tally_domain::AccountLedger::new(account_id);
    let context = tally_domain::CommandContext {
        command_id: tally_domain::CommandId::new(),
        issued_at: chrono::Utc::now(),
        now: chrono::Utc::now(),
    };
    let late = ledger.decide(open_account(), context).await.events;
    let mut head = EventHash::GENESIS;
    let records = late.into_iter().map(|mut event| {
        let payload = event.link(head);
        head = event.hash.expect("linked");
        tally_commands::log::NewRecord {
            topic: Topic::Events,
            key: account_id.to_string(),
            payload,
        }
    });
    log.append(records.collect())
        .await
        .expect("late events land");

    append(&log, account_id, add_money("5")).await;
    wait_for_events(&log, account_id, 4).await;

    let partition = log.partition_for(&account_id.to_string());
    let events = TopicPartition {
        topic: Topic::Events,
        partition,
    };
    let stored = log.read(events, 0, 10).await.expect("read events");
    let sequences: Vec<u64> = stored
        .iter()
        .map(|record| tally_domain::EventEnvelope::from_json(&record.payload).expect("event"))
        .filter(|event| event.account_id == account_id)
        .map(|event| event.sequence)
        .collect();
    assert_eq!(
        sequences,
        [1, 2, 3, 4],
        "the decision follows the late events"
    );
    stop_decider(stop, running).await;

    // ... and chains from them.
    assert_eq!(assert_chains_hold(&log).await, 4);
}

/// A transaction id minted `age` ago.
fn transaction_id_minted_ago(age: Duration) -> TransactionId {
    let minted = std::time::SystemTime::now() - age;
    let since_epoch = minted
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch");
    let timestamp = uuid::Timestamp::from_unix(
        uuid::NoContext,
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
    );
    TransactionId(uuid::Uuid::new_v7(timestamp))
}

#[tokio::test]
async fn a_transaction_stored_after_its_admission_window_is_not_decided() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(SqliteLogSettings::new(dir.path(), 4))
        .await
        .expect("open log");
    let (stop, stopping) = watch::channel(false);
    let running = tokio::spawn(decider::run(
        log.clone(),
        DeciderSettings::default(),
        stopping,
    ));
    let window = Duration::from_millis(
        u64::try_from(tally_domain::ledger::ADMISSION_WINDOW_MS).expect("positive"),
    );
    let with_id = |transaction_id| LedgerCommand::AddMoney {
        transaction_id,
        amount: Amount::parse("5", Currency::USD).expect("valid amount"),
        currency: Currency::USD,
    };
    let account_id = AccountId::new();
    let late = transaction_id_minted_ago(window + Duration::from_secs(5));
    let in_time = transaction_id_minted_ago(window - Duration::from_secs(5));
    append(&log, account_id, open_account()).await;
    append(&log, account_id, with_id(late)).await;
    append(&log, account_id, with_id(in_time)).await;
    // Opening takes one event and each decided transaction three; the late one takes none.
    wait_for_events(&log, account_id, 4).await;

    let partition = log.partition_for(&account_id.to_string());
    let events = TopicPartition {
        topic: Topic::Events,
        partition,
    };
    let stored = log.read(events, 0, 100).await.expect("read events");
    let correlations: Vec<uuid::Uuid> = stored
        .iter()
        .map(|record| tally_domain::EventEnvelope::from_json(&record.payload).expect("event"))
        .map(|event| event.correlation_id)
        .collect();
    assert_eq!(
        correlations.len(),
        4,
        "only the transaction stored in time is decided"
    );
    assert!(!correlations.contains(&late.0));
    assert_eq!(correlations[1..], [in_time.0; 3]);

    stop.send(true).expect("decider still listens");
    let outcome = tokio::time::timeout(WAIT, running)
        .await
        .expect("decider stops");
    outcome
        .expect("decider task")
        .expect("decider ends cleanly");
}
