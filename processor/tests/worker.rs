//! The processor over the real embedded log: events decided by the real ledger go in, and
//! airtime commands and notification requests come out, exactly once across restarts.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tally_commands::log::sqlite::{SqliteLog, SqliteLogSettings};
use tally_commands::log::{ConsumedOffset, EventLog, NewRecord, Polled, Topic, TopicPartition};
use tally_commands::message::CommandEnvelope;
use tally_domain::notification::{Channel, NotificationRequested, Outcome, Template};
use tally_domain::{
    AccountId, AccountInfo, AccountLedger, AirtimeOutcome, Amount, CommandContext, CommandId,
    Currency, EventEnvelope, LedgerCommand, PhoneNumber, TransactionId,
};
use tally_processor::{
    AirtimeProvider, AirtimeRequest, ProcessorError, ProcessorSettings, ProviderError, Simulator,
    run,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a test waits for the processor before it fails.
const WAIT_MAX: Duration = Duration::from_secs(10);

const PARTITION_COUNT: u32 = 4;

async fn open_log(data_dir: &Path) -> Arc<dyn EventLog> {
    let settings = SqliteLogSettings::new(data_dir, PARTITION_COUNT);
    SqliteLog::open(settings).await.expect("the log opens")
}

/// Settings that poll and retry fast, so tests run in milliseconds.
fn fast_settings() -> ProcessorSettings {
    ProcessorSettings {
        poll_wait_ms: 20,
        retry_delay_ms_min: 1,
        retry_delay_ms_max: 20,
        ..ProcessorSettings::default()
    }
}

/// A processor running in its own task.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ProcessorError>>,
}

fn start(log: &Arc<dyn EventLog>, provider: Arc<dyn AirtimeProvider>) -> Running {
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(Arc::clone(log), provider, fast_settings(), shutdown));
    Running { stop, task }
}

impl Running {
    async fn stop(self) -> Result<(), ProcessorError> {
        self.stop.send_replace(true);
        let ended = tokio::time::timeout(WAIT_MAX, self.task).await;
        ended
            .expect("the processor stops in time")
            .expect("the processor task does not panic")
    }
}

/// One account's stream, decided by the real ledger.
struct Account {
    ledger: AccountLedger,
    id: AccountId,
}

impl Account {
    fn new() -> Account {
        let id = AccountId::new();
        Account {
            ledger: AccountLedger::new(id),
            id,
        }
    }

    async fn decide(&mut self, command: LedgerCommand) -> Vec<EventEnvelope> {
        let context = CommandContext {
            command_id: CommandId::new(),
            issued_at: Utc::now(),
            now: Utc::now(),
        };
        let decision = self.ledger.decide(command, context).await;
        assert_eq!(decision.rejection, None, "the test command was rejected");
        decision.events
    }

    /// Opens the account and adds 100 USD.
    async fn opened_with_money(&mut self) -> Vec<EventEnvelope> {
        let info = AccountInfo::parse("Ada Lovelace", "ada@example.com", "+14155552671")
            .expect("valid test contacts");
        let open = LedgerCommand::OpenAccount {
            info,
            billing_address: None,
            currency: Currency::USD,
        };
        let add = LedgerCommand::AddMoney {
            transaction_id: TransactionId::new(),
            amount: usd("100"),
            currency: Currency::USD,
        };
        let mut events = self.decide(open).await;
        events.extend(self.decide(add).await);
        events
    }

    async fn send_airtime(
        &mut self,
        id: TransactionId,
        amount: &str,
        phone: &str,
    ) -> Vec<EventEnvelope> {
        let command = LedgerCommand::SendAirtime {
            transaction_id: id,
            amount: usd(amount),
            currency: Currency::USD,
            phone_number: PhoneNumber::parse(phone).expect("a valid test number"),
        };
        self.decide(command).await
    }
}

fn usd(text: &str) -> Amount {
    Amount::parse(text, Currency::USD).expect("a valid test amount")
}

async fn append_events(log: &Arc<dyn EventLog>, events: &[EventEnvelope]) {
    let record = |event: &EventEnvelope| NewRecord {
        topic: Topic::Events,
        key: event.account_id.to_string(),
        payload: event.to_json(),
    };
    let records = events.iter().map(record).collect();
    log.append(records).await.expect("events are appended");
}

/// Every record of a topic, partition by partition.
async fn payloads(log: &Arc<dyn EventLog>, topic: Topic) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    for partition in 0..PARTITION_COUNT {
        let partition = TopicPartition { topic, partition };
        let records = log.read(partition, 0, 10_000).await.expect("the log reads");
        payloads.extend(records.into_iter().map(|record| record.payload));
    }
    payloads
}

async fn commands(log: &Arc<dyn EventLog>) -> Vec<CommandEnvelope> {
    let payloads = payloads(log, Topic::Commands).await;
    let parse = |payload: Vec<u8>| CommandEnvelope::from_json(&payload).expect("a command");
    payloads.into_iter().map(parse).collect()
}

async fn notifications(log: &Arc<dyn EventLog>) -> Vec<NotificationRequested> {
    let payloads = payloads(log, Topic::Notifications).await;
    let parse = |payload: Vec<u8>| NotificationRequested::from_json(&payload).expect("a request");
    payloads.into_iter().map(parse).collect()
}

/// Waits until the topic holds at least `count` records.
async fn wait_for_records(log: &Arc<dyn EventLog>, topic: Topic, count: usize) {
    let waited = tokio::time::timeout(WAIT_MAX, async {
        while payloads(log, topic).await.len() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited
        .await
        .unwrap_or_else(|_| panic!("{} never held {count} records", topic.name()));
}

fn outcome_of(commands: &[CommandEnvelope], id: TransactionId) -> Option<&AirtimeOutcome> {
    commands
        .iter()
        .find_map(|envelope| match &envelope.command {
            LedgerCommand::CompleteAirtime {
                transaction_id,
                outcome,
            } if *transaction_id == id => Some(outcome),
            _ => None,
        })
}

fn kinds(notifications: &[NotificationRequested]) -> Vec<(Template, Outcome, Channel)> {
    let kind = |n: &NotificationRequested| (n.template, n.outcome, n.channel);
    notifications.iter().map(kind).collect()
}

#[tokio::test]
async fn the_processor_buys_airtime_and_requests_notifications_exactly_once() {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let log = open_log(data_dir.path()).await;
    let mut account = Account::new();
    let (delivered, rejected) = (TransactionId::new(), TransactionId::new());
    let mut events = account.opened_with_money().await;
    events.extend(
        account
            .send_airtime(delivered, "30.5", "+254712345678")
            .await,
    );
    events.extend(account.send_airtime(rejected, "5", "+254700000000").await);
    append_events(&log, &events).await;

    let processor = start(&log, Arc::new(Simulator));
    wait_for_records(&log, Topic::Commands, 2).await;
    wait_for_records(&log, Topic::Notifications, 4).await;
    processor.stop().await.expect("a clean stop");

    let completions = commands(&log).await;
    assert_eq!(completions.len(), 2);
    let provider_reference = format!("sim-{delivered}");
    let expected = AirtimeOutcome::Delivered { provider_reference };
    assert_eq!(outcome_of(&completions, delivered), Some(&expected));
    let provider_code = "number_rejected".to_owned();
    let expected = AirtimeOutcome::Rejected { provider_code };
    assert_eq!(outcome_of(&completions, rejected), Some(&expected));
    for completion in &completions {
        assert_eq!(completion.account_id, account.id);
        assert_eq!(completion.issued_by, None);
    }
    let expected = vec![
        (Template::AccountOpened, Outcome::Success, Channel::Email),
        (Template::AccountOpened, Outcome::Success, Channel::Sms),
        (Template::MoneyAdded, Outcome::Success, Channel::Email),
        (Template::MoneyAdded, Outcome::Success, Channel::Sms),
    ];
    assert_eq!(kinds(&notifications(&log).await), expected);

    // A restart with nothing new to read produces nothing.
    let processor = start(&log, Arc::new(Simulator));
    tokio::time::sleep(Duration::from_millis(300)).await;
    processor.stop().await.expect("a clean stop");
    assert_eq!(commands(&log).await.len(), 2);
    assert_eq!(notifications(&log).await.len(), 4);

    // The decider turns the provider's answers into events; a restarted processor, whose
    // state must be rebuilt to know the transactions' terms, tells the account holder.
    let mut answered = Vec::new();
    for completion in completions {
        answered.extend(account.decide(completion.command).await);
    }
    append_events(&log, &answered).await;
    let processor = start(&log, Arc::new(Simulator));
    wait_for_records(&log, Topic::Notifications, 8).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    processor.stop().await.expect("a clean stop");

    assert_eq!(commands(&log).await.len(), 2, "no airtime is bought twice");
    let all = notifications(&log).await;
    assert_eq!(all.len(), 8);
    let ids: HashSet<_> = all.iter().map(|n| n.notification_id).collect();
    assert_eq!(ids.len(), 8, "every notification is requested once");
    let airtime = &all[4..];
    let expected = vec![
        (Template::AirtimeSent, Outcome::Success, Channel::Email),
        (Template::AirtimeSent, Outcome::Success, Channel::Sms),
        (Template::AirtimeSent, Outcome::Failure, Channel::Email),
        (Template::AirtimeSent, Outcome::Failure, Channel::Sms),
    ];
    assert_eq!(kinds(airtime), expected);
    let value = |n: &NotificationRequested, key: &str| n.values.get(key).cloned();
    assert_eq!(
        value(&airtime[0], "phoneNumber").as_deref(),
        Some("+254712345678")
    );
    assert_eq!(value(&airtime[0], "amount").as_deref(), Some("30.50"));
    assert_eq!(value(&airtime[0], "name").as_deref(), Some("Ada Lovelace"));
    assert_eq!(airtime[0].recipient, "ada@example.com");
    assert_eq!(airtime[1].recipient, "+14155552671");
    let reason = value(&airtime[2], "failureReason");
    assert_eq!(reason.as_deref(), Some("airtime_provider_rejected"));
}

/// Fails with a transient error a set number of times, then answers as the simulator.
#[derive(Default)]
struct Flaky {
    failures: u32,
    calls: AtomicU32,
}

#[async_trait]
impl AirtimeProvider for Flaky {
    async fn send(&self, request: &AirtimeRequest) -> Result<AirtimeOutcome, ProviderError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= self.failures {
            return Err(ProviderError::Unavailable { status: 503 });
        }
        Ok(Simulator::answer(request))
    }
}

#[tokio::test]
async fn a_provider_failing_twice_then_answering_yields_exactly_one_completion() {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let log = open_log(data_dir.path()).await;
    let mut account = Account::new();
    let transaction_id = TransactionId::new();
    let mut events = account.opened_with_money().await;
    events.extend(
        account
            .send_airtime(transaction_id, "10", "+254712345678")
            .await,
    );
    append_events(&log, &events).await;
    let provider = Arc::new(Flaky {
        failures: 2,
        ..Flaky::default()
    });

    let processor = start(&log, Arc::clone(&provider) as Arc<dyn AirtimeProvider>);
    wait_for_records(&log, Topic::Commands, 1).await;
    processor.stop().await.expect("a clean stop");

    let completions = commands(&log).await;
    assert_eq!(completions.len(), 1);
    let outcome = outcome_of(&completions, transaction_id);
    assert!(matches!(outcome, Some(AirtimeOutcome::Delivered { .. })));
    assert_eq!(provider.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_shutdown_during_endless_retries_leaves_the_whole_batch_for_the_next_start() {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let log = open_log(data_dir.path()).await;
    let mut account = Account::new();
    let transaction_id = TransactionId::new();
    let mut events = account.opened_with_money().await;
    events.extend(
        account
            .send_airtime(transaction_id, "10", "+254712345678")
            .await,
    );
    append_events(&log, &events).await;
    let down = Arc::new(Flaky {
        failures: u32::MAX,
        ..Flaky::default()
    });

    let processor = start(&log, Arc::clone(&down) as Arc<dyn AirtimeProvider>);
    let retried = tokio::time::timeout(WAIT_MAX, async {
        while down.calls.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    retried.await.expect("the provider is retried");
    processor.stop().await.expect("a clean stop");
    assert_eq!(commands(&log).await.len(), 0);
    assert_eq!(
        notifications(&log).await.len(),
        0,
        "the batch is all or nothing"
    );

    let processor = start(&log, Arc::new(Simulator));
    wait_for_records(&log, Topic::Commands, 1).await;
    wait_for_records(&log, Topic::Notifications, 4).await;
    processor.stop().await.expect("a clean stop");
    assert_eq!(commands(&log).await.len(), 1);
    assert_eq!(notifications(&log).await.len(), 4);
}

#[tokio::test]
async fn a_processor_fenced_by_a_newer_member_rejoins_and_goes_on() {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let log = open_log(data_dir.path()).await;
    let processor = start(&log, Arc::new(Simulator));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let newer = log
        .consumer(tally_processor::GROUP, &[Topic::Events])
        .await
        .expect("a newer member joins");
    drop(newer);
    let mut account = Account::new();
    let transaction_id = TransactionId::new();
    let mut events = account.opened_with_money().await;
    events.extend(
        account
            .send_airtime(transaction_id, "10", "+254712345678")
            .await,
    );
    append_events(&log, &events).await;

    wait_for_records(&log, Topic::Commands, 1).await;
    processor.stop().await.expect("a clean stop");
    let completions = commands(&log).await;
    let outcome = outcome_of(&completions, transaction_id);
    assert!(matches!(outcome, Some(AirtimeOutcome::Delivered { .. })));
}

/// A commit can be lost after the group's offsets moved past a reservation (a broker stopped
/// in the middle of it has done so): no answer is ever decided for it. The next member to
/// rebuild the partition asks for the top-up again.
#[tokio::test]
async fn a_reservation_whose_answer_was_lost_is_asked_for_again_after_a_rebuild() {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let log = open_log(data_dir.path()).await;
    let mut account = Account::new();
    let (lost, answered) = (TransactionId::new(), TransactionId::new());
    let mut events = account.opened_with_money().await;
    events.extend(account.send_airtime(lost, "10", "+254712345678").await);
    events.extend(account.send_airtime(answered, "5", "+254712345679").await);
    append_events(&log, &events).await;

    // The group's offsets move past every event, with nothing appended: the answers are lost.
    let mut member = log
        .consumer(tally_processor::GROUP, &[Topic::Events])
        .await
        .expect("a member joins");
    let mut consumed = Vec::new();
    while consumed.len() < events.len() {
        match member.poll(100, Duration::from_millis(50)).await {
            Ok(Polled::Records(records)) => consumed.extend(records),
            Ok(_) => {}
            Err(error) => panic!("poll failed: {error}"),
        }
    }
    let last = consumed
        .iter()
        .map(|record| (record.topic_partition(), record.offset));
    let (partition, offset) = last.max_by_key(|(_, offset)| *offset).expect("records");
    let committed = ConsumedOffset {
        partition,
        next_offset: offset + 1,
    };
    member
        .commit(vec![committed], Vec::new())
        .await
        .expect("the offsets commit");
    drop(member);

    // One of the two was answered meanwhile; the next event of the partition comes after it.
    let completion = LedgerCommand::CompleteAirtime {
        transaction_id: answered,
        outcome: Simulator::answer(&AirtimeRequest {
            transaction_id: answered,
            phone_number: PhoneNumber::parse("+254712345679").expect("a valid test number"),
            amount: usd("5"),
            currency: Currency::USD,
        }),
    };
    let ended = account.decide(completion).await;
    append_events(&log, &ended).await;

    let processor = start(&log, Arc::new(Simulator));
    wait_for_records(&log, Topic::Commands, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    processor.stop().await.expect("a clean stop");

    let completions = commands(&log).await;
    assert_eq!(
        completions.len(),
        1,
        "only the open reservation is asked for"
    );
    let outcome = outcome_of(&completions, lost);
    assert!(matches!(outcome, Some(AirtimeOutcome::Delivered { .. })));
    assert_eq!(completions[0].account_id, account.id);
}

#[tokio::test]
async fn settings_out_of_range_are_refused_at_start() {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let log = open_log(data_dir.path()).await;
    let settings = ProcessorSettings {
        batch_records_max: 0,
        ..ProcessorSettings::default()
    };
    let (_stop, shutdown) = watch::channel(false);

    let result = run(log, Arc::new(Simulator), settings, shutdown).await;

    assert!(matches!(result, Err(ProcessorError::InvalidSettings(_))));
}
