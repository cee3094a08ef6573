//! End to end: the projector over the real embedded log and real read stores, fed with the
//! commands and the events a real `AccountLedger` decides, through stops, crashes and rebuilds.
//! Every test runs once on SQLite and once on MySQL (`name::sqlite`, `name::mysql`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use sqlx::{Column, Pool, Row};
use tally_commands::log::sqlite::{SqliteLog, SqliteLogSettings};
use tally_commands::log::{EventLog, NewRecord, Topic};
use tally_commands::message::CommandEnvelope;
use tally_domain::ledger::{AdjustmentDirection, AirtimeOutcome};
use tally_domain::{
    AccountEvent, AccountId, AccountInfo, AccountLedger, Amount, BillingAddress, CommandContext,
    Currency, EventEnvelope, FailureReason, LedgerCommand, LedgerEvent, PhoneNumber, TransactionId,
    TransactionStatus, TransactionType,
};
use tally_projections::test_support::{TestBackend, TestStore};
use tally_projections::{
    Backend, Get, Money, ProjectionError, ProjectorSettings, ReadStore, ReplayProgress, Sql,
    TransactionFilter, TransactionView, backend_tests, lag, replay, run, with_pool,
};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const PARTITIONS: u32 = 4;
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
const USD: Currency = Currency::USD;

/// A log, the ledgers deciding its streams, and a count of what was appended.
struct World {
    /// Holds the log's files for as long as the world lives.
    _dir: TempDir,
    backend: TestBackend,
    log: Arc<dyn EventLog>,
    ledgers: HashMap<AccountId, AccountLedger>,
    commands: usize,
    events: usize,
    /// Events that move posted money: one statement line each.
    money_events: usize,
    /// Commands that start a transaction: one transaction row each.
    transaction_commands: usize,
}

impl World {
    async fn new(backend: TestBackend) -> World {
        let dir = tempfile::tempdir().unwrap();
        let settings = SqliteLogSettings::new(dir.path().join("log"), PARTITIONS);
        let log: Arc<dyn EventLog> = SqliteLog::open(settings).await.unwrap();
        World {
            _dir: dir,
            backend,
            log,
            ledgers: HashMap::new(),
            commands: 0,
            events: 0,
            money_events: 0,
            transaction_commands: 0,
        }
    }

    /// A new, empty read store on the world's backend.
    async fn store(&self) -> TestStore {
        TestStore::open(self.backend).await
    }

    /// Appends a command, then the events its account's ledger decides, as the decider would.
    async fn submit(&mut self, account_id: AccountId, command: LedgerCommand) -> CommandEnvelope {
        let envelope = CommandEnvelope::new(account_id, None, command.clone());
        self.log.append(vec![envelope.to_record()]).await.unwrap();
        self.commands += 1;
        let starts_transaction = matches!(
            command,
            LedgerCommand::AddMoney { .. }
                | LedgerCommand::SendAirtime { .. }
                | LedgerCommand::AdjustBalance { .. }
        );
        self.transaction_commands += usize::from(starts_transaction);

        let ledger =
            (self.ledgers.entry(account_id)).or_insert_with(|| AccountLedger::new(account_id));
        // The decider decides a little after the command was issued.
        let context = CommandContext {
            command_id: envelope.command_id,
            issued_at: envelope.issued_at,
            now: envelope.issued_at + chrono::Duration::milliseconds(5),
        };
        let events = ledger.decide(command, context).await.events;
        self.events += events.len();
        self.money_events += events.iter().filter(|event| moves_money(event)).count();
        let records = (events.iter())
            .map(|event| NewRecord {
                topic: Topic::Events,
                key: account_id.to_string(),
                payload: event.to_json(),
            })
            .collect();
        self.log.append(records).await.unwrap();
        envelope
    }

    /// Opens an account, credits it, and runs airtime sends that succeed and fail.
    async fn busy_account(&mut self, account_id: AccountId) {
        self.submit(account_id, open()).await;
        self.submit(account_id, add_money(TransactionId::new(), "100"))
            .await;
        let delivered = TransactionId::new();
        self.submit(account_id, send_airtime(delivered, "12.25"))
            .await;
        self.submit(account_id, complete(delivered, "ref")).await;
        let rejected = TransactionId::new();
        self.submit(account_id, send_airtime(rejected, "5")).await;
        let outcome = AirtimeOutcome::Rejected {
            provider_code: "E1".to_owned(),
        };
        let command = LedgerCommand::CompleteAirtime {
            transaction_id: rejected,
            outcome,
        };
        self.submit(account_id, command).await;
        self.submit(account_id, send_airtime(TransactionId::new(), "1000"))
            .await;
        self.submit(account_id, admin(AdjustmentDirection::Debit, "0.75"))
            .await;
    }

    fn balance(&self, account_id: AccountId) -> Decimal {
        self.ledgers[&account_id].account().balance()
    }
}

fn moves_money(envelope: &EventEnvelope) -> bool {
    matches!(
        envelope.event,
        LedgerEvent::Account(
            AccountEvent::AccountCredited { .. }
                | AccountEvent::AccountDebited { .. }
                | AccountEvent::ReservationPosted { .. }
        )
    )
}

fn open() -> LedgerCommand {
    let info = AccountInfo::parse("Ada", "ada@example.com", "+14155552671").unwrap();
    let billing_address = BillingAddress {
        city: Some("Nairobi".to_owned()),
        country: Some("KE".to_owned()),
        ..BillingAddress::default()
    };
    LedgerCommand::OpenAccount {
        info,
        billing_address: Some(billing_address),
        currency: USD,
    }
}

fn usd(text: &str) -> Amount {
    Amount::parse(text, USD).unwrap()
}

fn add_money(transaction_id: TransactionId, amount: &str) -> LedgerCommand {
    LedgerCommand::AddMoney {
        transaction_id,
        amount: usd(amount),
        currency: USD,
    }
}

fn send_airtime(transaction_id: TransactionId, amount: &str) -> LedgerCommand {
    LedgerCommand::SendAirtime {
        transaction_id,
        amount: usd(amount),
        currency: USD,
        phone_number: PhoneNumber::parse("+254712345678").unwrap(),
    }
}

fn complete(transaction_id: TransactionId, reference: &str) -> LedgerCommand {
    let outcome = AirtimeOutcome::Delivered {
        provider_reference: reference.to_owned(),
    };
    LedgerCommand::CompleteAirtime {
        transaction_id,
        outcome,
    }
}

fn admin(direction: AdjustmentDirection, amount: &str) -> LedgerCommand {
    LedgerCommand::AdjustBalance {
        transaction_id: TransactionId::new(),
        direction,
        amount: usd(amount),
        currency: USD,
    }
}

fn money(text: &str) -> Decimal {
    Decimal::from_str_exact(text).unwrap()
}

/// A projector task and the switch that stops it.
struct Projector {
    task: JoinHandle<Result<(), ProjectionError>>,
    shutdown: watch::Sender<bool>,
}

impl Projector {
    fn start(log: &Arc<dyn EventLog>, store: &ReadStore, settings: ProjectorSettings) -> Self {
        let (shutdown, stopping) = watch::channel(false);
        let task = tokio::spawn(run(log.clone(), store.clone(), settings, stopping));
        Projector { task, shutdown }
    }

    /// Asks the projector to stop and checks that it stopped cleanly.
    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }

    /// Kills the projector wherever it is, as a crash would.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn small_batches(batch_records_max: usize) -> ProjectorSettings {
    ProjectorSettings {
        batch_records_max,
        ..ProjectorSettings::default()
    }
}

async fn caught_up(log: &Arc<dyn EventLog>, store: &ReadStore) {
    let wait = async {
        while lag(log.as_ref(), store).await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(CATCH_UP_TIMEOUT, wait)
        .await
        .expect("the projector should catch up with the log");
}

async fn count(test: &TestStore, table: &str) -> usize {
    usize::try_from(test.count(table).await).unwrap()
}

/// Every row of every read table as text, in key order.
async fn dump(store: &ReadStore) -> Vec<String> {
    with_pool!(store, pool => dump_tables(pool).await)
}

async fn dump_tables<DB: Backend>(pool: &Pool<DB>) -> Vec<String> {
    let tables = [
        "accounts",
        "transactions",
        "statement_lines",
        "account_events",
        "projection_offsets",
        "daily_transaction_volumes",
        "daily_airtime_destinations",
    ];
    let conn = &mut *pool.acquire().await.unwrap();
    let mut rows = Vec::new();
    for table in tables {
        let select = Sql::<DB>::new(format!("SELECT * FROM {table} ORDER BY 1, 2, 3, 4"));
        for row in &select.fetch_all(conn).await.unwrap() {
            let cells: Vec<String> = (row.columns().iter())
                .map(|column| cell::<DB>(row, column.name()))
                .collect();
            rows.push(format!("{table}: {}", cells.join(" | ")));
        }
    }
    rows
}

/// A cell as text, whether it holds text, an integer or money.
fn cell<DB: Backend>(row: &DB::Row, column: &str) -> String {
    let text: Result<Option<String>, _> = row.value(column);
    let number: Result<Option<i64>, _> = row.value(column);
    let cell = match (text, number) {
        (Ok(text), _) => text,
        (_, Ok(number)) => number.map(|number| number.to_string()),
        _ => {
            let money: Money = row.value(column).unwrap();
            Some(money.value().to_string())
        }
    };
    cell.unwrap_or_else(|| "NULL".to_owned())
}

/// The account's statement lines, read as the read store reads money.
async fn statement(store: &ReadStore, account_id: AccountId) -> Vec<(String, String, String)> {
    with_pool!(store, pool => statement_lines(pool, account_id).await)
}

async fn statement_lines<DB: Backend>(
    pool: &Pool<DB>,
    account_id: AccountId,
) -> Vec<(String, String, String)> {
    let select = Sql::<DB>::new(
        "SELECT entry, amount, balance_after FROM statement_lines WHERE account_id = ? \
         ORDER BY sequence",
    );
    let rows = (select.bind(account_id.to_string()))
        .fetch_all(&mut *pool.acquire().await.unwrap())
        .await
        .unwrap();
    let usd = |row: &DB::Row, column| {
        let money: Money = row.value(column).unwrap();
        money.in_currency(USD).unwrap().to_string()
    };
    (rows.iter())
        .map(|row| {
            let entry = row.value("entry").unwrap();
            (entry, usd(row, "amount"), usd(row, "balance_after"))
        })
        .collect()
}

fn line(entry: &str, amount: &str, balance_after: &str) -> (String, String, String) {
    (
        entry.to_owned(),
        amount.to_owned(),
        balance_after.to_owned(),
    )
}

backend_tests!(
    the_read_tables_follow_an_account_through_a_credit_and_an_airtime_send,
    failures_updates_and_undecodable_records_show_without_stopping_the_projector,
    a_projector_stopped_killed_and_restarted_applies_every_record_exactly_once,
    rebuilding_into_a_fresh_store_from_offset_zero_gives_identical_tables,
    a_replay_into_an_empty_store_gives_the_tables_the_live_projector_built,
    the_analysis_tables_count_each_transaction_once_by_its_day_and_current_status,
    transactions_page_by_creation_time_and_filters_exactly_on_amounts,
);

async fn the_read_tables_follow_an_account_through_a_credit_and_an_airtime_send(
    backend: TestBackend,
) {
    let mut world = World::new(backend).await;
    let test = world.store().await;
    let store = test.store();
    let projector = Projector::start(&world.log, store, ProjectorSettings::default());
    let account_id = AccountId::new();

    let opened = world.submit(account_id, open()).await;
    let top_up = TransactionId::new();
    world.submit(account_id, add_money(top_up, "100")).await;
    caught_up(&world.log, store).await;

    let account = store.account(account_id).await.unwrap().unwrap();
    assert_eq!(account.balance.to_string(), "100.00");
    assert_eq!(account.last_causation_id, opened.command_id);
    let city = account.billing_address.and_then(|address| address.city);
    assert_eq!(city.as_deref(), Some("Nairobi"));
    let top_up = store.transaction(top_up).await.unwrap().unwrap();
    assert_eq!(top_up.transaction_type, TransactionType::AddMoney);
    assert_eq!(top_up.status, TransactionStatus::Successful);

    let airtime = TransactionId::new();
    world
        .submit(account_id, send_airtime(airtime, "30.5"))
        .await;
    caught_up(&world.log, store).await;

    let account = store.account(account_id).await.unwrap().unwrap();
    assert_eq!(
        (account.held, account.available),
        (money("30.50"), money("69.50"))
    );
    let pending = store.transaction(airtime).await.unwrap().unwrap();
    assert_eq!(pending.status, TransactionStatus::Processing);
    assert_eq!(pending.phone_number.as_deref(), Some("+254712345678"));
    assert_eq!(pending.account_id, account_id);

    world
        .submit(account_id, complete(airtime, "provider-7"))
        .await;
    caught_up(&world.log, store).await;

    let account = store.account(account_id).await.unwrap().unwrap();
    assert_eq!(account.balance.to_string(), "69.50");
    assert_eq!(account.held.to_string(), "0.00");
    assert_eq!(account.sequence, 8);
    let sent = store.transaction(airtime).await.unwrap().unwrap();
    assert_eq!(sent.status, TransactionStatus::Successful);
    assert_eq!(sent.provider_reference.as_deref(), Some("provider-7"));
    assert_eq!(
        statement(store, account_id).await,
        vec![
            line("CREDIT", "100.00", "100.00"),
            line("DEBIT", "30.50", "69.50")
        ]
    );
    let events = store.account_events(account_id, 0, 100).await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "AccountOpened",
            "TransactionStarted",
            "AccountCredited",
            "TransactionSucceeded",
            "TransactionStarted",
            "FundsReserved",
            "ReservationPosted",
            "TransactionSucceeded",
        ][..]
    );
    assert_eq!(events.len(), world.events);
    projector.stop().await;
}

async fn failures_updates_and_undecodable_records_show_without_stopping_the_projector(
    backend: TestBackend,
) {
    let mut world = World::new(backend).await;
    let test = world.store().await;
    let store = test.store();
    let projector = Projector::start(&world.log, store, ProjectorSettings::default());
    let account_id = AccountId::new();
    world.submit(account_id, open()).await;
    let garbage = NewRecord {
        topic: Topic::Commands,
        key: account_id.to_string(),
        payload: b"{\"commandId\": 42".to_vec(),
    };
    world.log.append(vec![garbage]).await.unwrap();

    let too_much = TransactionId::new();
    world.submit(account_id, send_airtime(too_much, "5")).await;
    let info = AccountInfo::parse("Ada L.", "ada@example.org", "+14155552671").unwrap();
    let update = LedgerCommand::UpdateAccount {
        info,
        billing_address: None,
    };
    let updated = world.submit(account_id, update).await;
    caught_up(&world.log, store).await;

    let failed = store.transaction(too_much).await.unwrap().unwrap();
    assert_eq!(failed.status, TransactionStatus::Failed);
    assert_eq!(
        failed.failure_reason,
        Some(FailureReason::InsufficientFunds)
    );
    let account = store.account(account_id).await.unwrap().unwrap();
    assert_eq!(
        (account.name.as_str(), account.email.as_str()),
        ("Ada L.", "ada@example.org")
    );
    assert_eq!(account.last_causation_id, updated.command_id);
    assert_eq!(account.billing_address, None);
    let offsets = store.offsets().await.unwrap();
    let skipped: u64 = offsets.iter().map(|offset| offset.skipped_records).sum();
    assert_eq!(skipped, 1);
    projector.stop().await;
}

async fn a_projector_stopped_killed_and_restarted_applies_every_record_exactly_once(
    backend: TestBackend,
) {
    let mut world = World::new(backend).await;
    let test = world.store().await;
    let store = test.store();
    let accounts: Vec<AccountId> = (0..6).map(|_| AccountId::new()).collect();
    for &account_id in &accounts[..3] {
        world.busy_account(account_id).await;
    }

    // A first run stopped cleanly after it caught up.
    let projector = Projector::start(&world.log, store, small_batches(3));
    caught_up(&world.log, store).await;
    projector.stop().await;
    let offsets_before = store.offsets().await.unwrap();

    // More records, and a run killed while it is still catching up.
    for &account_id in &accounts[3..] {
        world.busy_account(account_id).await;
    }
    let behind = lag(world.log.as_ref(), store).await.unwrap();
    let projector = Projector::start(&world.log, store, small_batches(2));
    let progress = async {
        while lag(world.log.as_ref(), store).await.unwrap() == behind {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(CATCH_UP_TIMEOUT, progress)
        .await
        .expect("the projector should make progress");
    projector.kill().await;

    // A last run on the same store finishes the job.
    let projector = Projector::start(&world.log, store, small_batches(5));
    caught_up(&world.log, store).await;
    projector.stop().await;

    assert_eq!(count(&test, "statement_lines").await, world.money_events);
    assert_eq!(count(&test, "account_events").await, world.events);
    assert_eq!(
        count(&test, "transactions").await,
        world.transaction_commands
    );
    assert_eq!(count(&test, "accounts").await, accounts.len());
    for &account_id in &accounts {
        let account = store.account(account_id).await.unwrap().unwrap();
        assert_eq!(account.balance, world.balance(account_id), "{account_id}");
        assert_eq!(account.held, Decimal::ZERO);
    }
    let offsets_after = store.offsets().await.unwrap();
    for before in &offsets_before {
        let after = offsets_after
            .iter()
            .find(|after| after.topic_partition() == before.topic_partition());
        assert!(after.is_some_and(|after| after.next_offset >= before.next_offset));
    }
    let stored_total: u64 = offsets_after.iter().map(|offset| offset.next_offset).sum();
    let appended = world.events + world.commands;
    assert_eq!(stored_total, u64::try_from(appended).unwrap());
}

async fn rebuilding_into_a_fresh_store_from_offset_zero_gives_identical_tables(
    backend: TestBackend,
) {
    let mut world = World::new(backend).await;
    for _ in 0..5 {
        world.busy_account(AccountId::new()).await;
    }
    // Rejected commands put this account's commands far behind its events, so a projector
    // reading small batches sees its credit's events before the command that asked for it.
    let late = AccountId::new();
    for _ in 0..40 {
        world.submit(late, open()).await;
    }
    world
        .submit(late, add_money(TransactionId::new(), "1"))
        .await;
    let original_test = world.store().await;
    let original = original_test.store();
    let projector = Projector::start(&world.log, original, ProjectorSettings::default());
    caught_up(&world.log, original).await;
    projector.stop().await;

    // Other batch boundaries, so the commands and events meet in another order.
    let rebuilt_test = world.store().await;
    let rebuilt = rebuilt_test.store();
    let projector = Projector::start(&world.log, rebuilt, small_batches(7));
    caught_up(&world.log, rebuilt).await;
    projector.stop().await;

    let rows = dump(original).await;
    assert!(rows.len() > world.events, "every table should have rows");
    assert_eq!(rows, dump(rebuilt).await);
}

async fn a_replay_into_an_empty_store_gives_the_tables_the_live_projector_built(
    backend: TestBackend,
) {
    let mut world = World::new(backend).await;
    for _ in 0..5 {
        world.busy_account(AccountId::new()).await;
    }
    let live_test = world.store().await;
    let live = live_test.store();
    let projector = Projector::start(&world.log, live, small_batches(13));
    caught_up(&world.log, live).await;
    projector.stop().await;

    let replayed_test = world.store().await;
    let replayed_store = replayed_test.store();
    let reports = std::sync::Mutex::new(Vec::new());
    let report = |progress| reports.lock().unwrap().push(progress);
    let replayed = replay(
        world.log.as_ref(),
        replayed_store,
        &small_batches(7),
        &report,
    )
    .await
    .unwrap();
    let appended = u64::try_from(world.events + world.commands).unwrap();
    assert_eq!(replayed.records, appended);
    assert!(replayed.batches >= appended / 7);
    let reports: Vec<ReplayProgress> = reports.into_inner().unwrap();
    assert!(
        reports.len() as u64 >= replayed.batches,
        "a report after every batch"
    );
    assert!(
        reports
            .windows(2)
            .all(|pair| pair[0].offsets_done <= pair[1].offsets_done)
    );
    let last = reports.last().copied().unwrap_or_default();
    assert_eq!(last.records, appended);
    assert_eq!(last.offsets_done, last.offsets_total);
    assert!(last.offsets_total >= appended);
    let rows = dump(live).await;
    assert!(rows.len() > world.events, "every table should have rows");
    assert_eq!(rows, dump(replayed_store).await);

    // A second replay finds the store at the log's end and applies nothing.
    let again = replay(
        world.log.as_ref(),
        replayed_store,
        &ProjectorSettings::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(again.records, 0);
    assert_eq!(rows, dump(replayed_store).await);
}

/// A row of an analysis table: its key as text, its count and its amount.
type AnalysisRow = (Vec<String>, i64, Decimal);

async fn analysis_rows(store: &ReadStore, table: &str) -> Vec<AnalysisRow> {
    with_pool!(store, pool => analysis_rows_on(pool, table).await)
}

async fn analysis_rows_on<DB: Backend>(pool: &Pool<DB>, table: &str) -> Vec<AnalysisRow> {
    let conn = &mut *pool.acquire().await.unwrap();
    let select = Sql::<DB>::new(format!("SELECT * FROM {table} ORDER BY 1, 2, 3, 4"));
    let rows = select.fetch_all(conn).await.unwrap();
    (rows.iter())
        .map(|row| {
            let key = (row.columns().iter().take(4))
                .map(|column| row.value(column.name()).unwrap())
                .collect();
            let count: i64 = row.value("transaction_count").unwrap();
            let amount: Money = row.value("amount_total").unwrap();
            (key, count, amount.value().normalize())
        })
        .collect()
}

/// Every transaction of the store, read page by page in the listing order.
async fn every_transaction(store: &ReadStore, page_size: u32) -> Vec<TransactionView> {
    let filter = TransactionFilter::default();
    let mut all: Vec<TransactionView> = Vec::new();
    loop {
        let after = all.last().map(TransactionView::cursor);
        let page = store.transactions_page(&filter, after, page_size).await;
        let page = page.unwrap();
        let last_page = page.len() < page_size as usize;
        all.extend(page);
        if last_page {
            return all;
        }
    }
}

/// The analysis rows the test expects: each transaction counted once, under the UTC day it
/// was created, its type (or, with `airtime`, its destination's calling code), its currency
/// and its status now.
fn model(transactions: &[TransactionView], airtime: bool) -> Vec<AnalysisRow> {
    let mut rows: std::collections::BTreeMap<Vec<String>, (i64, Decimal)> = Default::default();
    for transaction in transactions {
        let is_airtime = transaction.transaction_type == TransactionType::SendAirtime;
        if airtime && !is_airtime {
            continue;
        }
        let second = match airtime {
            // Every airtime send of these tests goes to +254 (Kenya).
            true => "254".to_owned(),
            false => transaction.transaction_type.as_str().to_owned(),
        };
        let key = vec![
            transaction.created_at.format("%Y-%m-%d").to_string(),
            second,
            transaction.currency.code().to_owned(),
            transaction.status.as_str().to_owned(),
        ];
        let row = rows.entry(key).or_default();
        row.0 += 1;
        row.1 += transaction.amount;
    }
    (rows.into_iter())
        .map(|(key, (count, amount))| (key, count, amount.normalize()))
        .collect()
}

async fn the_analysis_tables_count_each_transaction_once_by_its_day_and_current_status(
    backend: TestBackend,
) {
    let mut world = World::new(backend).await;
    let test = world.store().await;
    let store = test.store();
    let projector = Projector::start(&world.log, store, small_batches(5));
    let account_id = AccountId::new();
    world.submit(account_id, open()).await;
    // A command whose events are not decided yet: its transaction counts as ACCEPTED.
    let pending = TransactionId::new();
    let command = CommandEnvelope::new(account_id, None, add_money(pending, "7.5"));
    world.log.append(vec![command.to_record()]).await.unwrap();
    caught_up(&world.log, store).await;

    let accepted = analysis_rows(store, "daily_transaction_volumes").await;
    let keys: Vec<(&str, i64, String)> = (accepted.iter())
        .map(|(key, count, amount)| (key[3].as_str(), *count, amount.to_string()))
        .collect();
    assert_eq!(keys, [("ACCEPTED", 1, "7.5".to_owned())]);

    world.submit(account_id, add_money(pending, "7.5")).await;
    // An airtime send the provider has not answered yet stays PROCESSING.
    world
        .submit(account_id, send_airtime(TransactionId::new(), "2"))
        .await;
    for _ in 0..3 {
        world.busy_account(AccountId::new()).await;
    }
    caught_up(&world.log, store).await;
    projector.stop().await;

    let transactions = every_transaction(store, 4).await;
    assert_eq!(transactions.len(), world.transaction_commands);
    let volumes = analysis_rows(store, "daily_transaction_volumes").await;
    assert_eq!(volumes, model(&transactions, false));
    assert!(volumes.iter().all(|(key, _, _)| key[3] != "ACCEPTED"));
    let statuses: Vec<&str> = volumes.iter().map(|(key, _, _)| key[3].as_str()).collect();
    assert!(statuses.contains(&"FAILED") && statuses.contains(&"PROCESSING"));
    let destinations = analysis_rows(store, "daily_airtime_destinations").await;
    assert_eq!(destinations, model(&transactions, true));
    assert!(!destinations.is_empty());
}

async fn transactions_page_by_creation_time_and_filters_exactly_on_amounts(backend: TestBackend) {
    let mut world = World::new(backend).await;
    let test = world.store().await;
    let store = test.store();
    let account_id = AccountId::new();
    world.submit(account_id, open()).await;
    for amount in ["0.01", "9.99", "10", "10.01", "100", "1000.5"] {
        world
            .submit(account_id, add_money(TransactionId::new(), amount))
            .await;
    }
    world.busy_account(AccountId::new()).await;
    let projector = Projector::start(&world.log, store, ProjectorSettings::default());
    caught_up(&world.log, store).await;
    projector.stop().await;

    let all = every_transaction(store, 3).await;
    assert_eq!(all.len(), world.transaction_commands);
    let mut sorted = all.clone();
    sorted.sort_by_key(|transaction| (transaction.created_at, transaction.transaction_id));
    assert_eq!(all, sorted);

    let amounts = |filter: TransactionFilter| async move {
        let page = store.transactions_page(&filter, None, 100).await.unwrap();
        (page.iter())
            .map(|transaction| transaction.amount.to_string())
            .collect::<Vec<_>>()
    };
    let between = TransactionFilter {
        account_id: Some(account_id),
        amount_min: Some(money("9.995")),
        amount_max: Some(money("100.00")),
        ..TransactionFilter::default()
    };
    assert_eq!(amounts(between).await, ["10.00", "10.01", "100.00"]);
    let exact = TransactionFilter {
        account_id: Some(account_id),
        amount_min: Some(money("10.01")),
        amount_max: Some(money("10.01")),
        ..TransactionFilter::default()
    };
    assert_eq!(amounts(exact).await, ["10.01"]);
    let failed_airtime = TransactionFilter {
        status: Some(TransactionStatus::Failed),
        transaction_type: Some(TransactionType::SendAirtime),
        ..TransactionFilter::default()
    };
    assert_eq!(amounts(failed_airtime).await, ["5.00", "1000.00"]);
    let first = &all[0];
    let from_second = TransactionFilter {
        created_from: Some(all[1].created_at),
        created_before: Some(all[3].created_at),
        ..TransactionFilter::default()
    };
    let window = store.transactions_page(&from_second, None, 100).await;
    let window: Vec<_> = window.unwrap();
    assert!(window.iter().all(|t| t.created_at >= all[1].created_at));
    assert!(window.iter().all(|t| t.created_at < all[3].created_at));
    assert!(
        !window
            .iter()
            .any(|t| t.transaction_id == first.transaction_id)
    );
}
