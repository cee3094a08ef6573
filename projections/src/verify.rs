//! The audit behind `tally verify`: proves that every balance follows from the history, or
//! says where it does not. It reads the log and the read store and writes nothing to either.
//!
//! The read store is read through one [`Snapshot`], taken first; the offsets it holds are the
//! cut where its rows and the log can be compared, however far a live projector has gone
//! since. The log is then read to the end each partition has at that point, and checked:
//!
//! - each partition of the events topic is one unbroken hash chain (module `chain`);
//! - each account's stream is gapless, and its money adds up, never below zero (module
//!   `ledger`);
//! - each transaction whose command is in the commands topic has ended, or is younger than
//!   the pending limit;
//! - the read store's balances are the ones the events lead to at the cut;
//! - the read tables equal, row for row, a replay of the log up to the cut into a scratch
//!   store, with the projector's own code ([`crate::compare`]).

mod chain;
mod ledger;
mod report;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tally_commands::log::{EventLog, Record, Topic, TopicPartition};
use tally_commands::message::CommandEnvelope;
use tally_domain::{AccountId, EventEnvelope, LedgerCommand, TransactionId};

use crate::compare::{self, ACCOUNTS, Cell, Cursor};
use crate::error::ProjectionError;
use crate::projector::{ProjectorSettings, next_offset, replay_until};
use crate::queries::StoredOffset;
use crate::store::{ReadStore, Snapshot};
use chain::{BreakLocator, ChainWalk};
use ledger::{At, LedgerFold};
use report::Findings;
pub use report::{FINDINGS_KEPT_MAX, Finding, FindingKind, Severity, Verdict, VerifyReport};

/// Records read from the log per call: large enough to amortize a read, small enough to keep
/// the audit's memory in the low megabytes per call.
const READ_RECORDS_MAX: usize = 5_000;

/// How the audit runs.
#[derive(Clone, Debug)]
pub struct VerifySettings {
    /// A transaction without a final status is a failure once its command has been in the log
    /// this long, and only information before.
    pub pending_limit_ms: i64,
    /// The audit's clock, for the pending limit.
    pub now: DateTime<Utc>,
    /// How the replay into the scratch store batches and retries.
    pub projector: ProjectorSettings,
}

/// Audits the log against itself and against the read store `live`, replaying into
/// `scratch`, an empty store that the audit may fill (a temporary SQLite file will do).
///
/// Fails only when the log or a store cannot be read; everything the history does not
/// explain is a finding in the report.
pub async fn verify(
    log: &dyn EventLog,
    live: &ReadStore,
    scratch: &ReadStore,
    settings: &VerifySettings,
) -> Result<VerifyReport, ProjectionError> {
    let mut snapshot = live.snapshot().await?;
    let cut = snapshot.offsets().await?;
    let ends = LogEnds::read(log).await?;
    let mut findings = Findings::default();
    let mut report = VerifyReport::default();
    check_cut(log, &cut, &ends, &mut findings).await?;

    let fold = check_events(log, &ends, &cut, &mut report, &mut findings).await?;
    check_commands(log, &ends, &fold, settings, &mut report, &mut findings).await?;
    check_store_balances(&mut snapshot, &fold, &mut findings).await?;
    report.rows_compared =
        compare_with_replay(log, &mut snapshot, scratch, &cut, settings, &mut findings).await?;
    Ok(report.with_findings(findings))
}

/// The end of every partition of the events and commands topics when the audit began.
struct LogEnds {
    ends: Vec<(TopicPartition, u64)>,
}

impl LogEnds {
    async fn read(log: &dyn EventLog) -> Result<LogEnds, ProjectionError> {
        let mut ends = Vec::new();
        for topic in [Topic::Events, Topic::Commands] {
            for partition in 0..log.partition_count() {
                let partition = TopicPartition { topic, partition };
                ends.push((partition, log.end_offset(partition).await?));
            }
        }
        Ok(LogEnds { ends })
    }

    fn of(&self, topic: Topic) -> impl Iterator<Item = (TopicPartition, u64)> + '_ {
        (self.ends.iter().copied()).filter(move |(partition, _)| partition.topic == topic)
    }
}

/// The store may be behind the log (a projector catching up, or stopped before it caught up)
/// but never ahead of it. Behind means records it has not applied: on Kafka the offsets
/// before the end may be only transaction markers, which are not.
async fn check_cut(
    log: &dyn EventLog,
    cut: &[StoredOffset],
    ends: &LogEnds,
    findings: &mut Findings,
) -> Result<(), ProjectionError> {
    for (partition, end) in ends.ends.iter().copied() {
        let applied = next_offset(cut, partition);
        let (topic, number) = (partition.topic.name(), partition.partition);
        if applied > end {
            let detail = format!(
                "the read store applied {topic} partition {number} up to offset {applied}, \
                 but the log ends at {end}: records it applied are gone"
            );
            findings.push(Finding::new(FindingKind::ReadStoreAheadOfLog, detail));
        } else if applied < end && holds_records(log, partition, applied, end).await? {
            let detail = format!(
                "the read store has applied {topic} partition {number} up to offset \
                 {applied} of {end}; it is compared with the log up to there"
            );
            findings.push(Finding::new(FindingKind::ReadStoreBehind, detail));
        }
    }
    Ok(())
}

/// Whether the partition holds a record in `from..end`.
async fn holds_records(
    log: &dyn EventLog,
    partition: TopicPartition,
    from: u64,
    end: u64,
) -> Result<bool, ProjectionError> {
    let first = log.read(partition, from, 1).await?;
    Ok(first.first().is_some_and(|record| record.offset < end))
}

/// Reads the records of a partition from `from` up to `end`, at most a page.
async fn read_page(
    log: &dyn EventLog,
    partition: TopicPartition,
    from: u64,
    end: u64,
) -> Result<Vec<Record>, ProjectionError> {
    if from >= end {
        return Ok(Vec::new());
    }
    let mut records = log.read(partition, from, READ_RECORDS_MAX).await?;
    records.truncate(records.partition_point(|record| record.offset < end));
    Ok(records)
}

/// Walks every partition of the events topic: its chain, and every account's money.
async fn check_events(
    log: &dyn EventLog,
    ends: &LogEnds,
    cut: &[StoredOffset],
    report: &mut VerifyReport,
    findings: &mut Findings,
) -> Result<LedgerFold, ProjectionError> {
    let mut fold = LedgerFold::default();
    for (partition, end) in ends.of(Topic::Events) {
        let applied = next_offset(cut, partition);
        let mut chain = ChainWalk::new(partition.partition);
        let mut next = 0;
        loop {
            let records = read_page(log, partition, next, end).await?;
            let Some(last) = records.last() else { break };
            next = last.offset + 1;
            for record in &records {
                report.events_checked += 1;
                let Ok(envelope) = EventEnvelope::from_json(&record.payload) else {
                    findings.push(unreadable_event(record));
                    chain.unreadable(record);
                    continue;
                };
                chain.event(record.offset, &envelope, findings);
                let at = At {
                    partition: partition.partition,
                    offset: record.offset,
                    within_store: record.offset < applied,
                };
                fold.event(at, &envelope, findings);
            }
        }
        locate_breaks(log, partition, end, chain, findings).await?;
    }
    fold.finish(findings);
    report.accounts = fold.accounts.len() as u64;
    Ok(fold)
}

fn unreadable_event(record: &Record) -> Finding {
    let detail = "unreadable: its bytes do not decode as an event".to_owned();
    Finding::new(FindingKind::EventUnreadable, detail).at(
        record.topic,
        record.partition,
        record.offset,
    )
}

/// Reads a partition whose chain broke a second time, to tell dropped events from moved ones.
async fn locate_breaks(
    log: &dyn EventLog,
    partition: TopicPartition,
    end: u64,
    chain: ChainWalk,
    findings: &mut Findings,
) -> Result<(), ProjectionError> {
    let breaks = chain.into_breaks();
    if breaks.is_empty() {
        return Ok(());
    }
    let mut locator = BreakLocator::new(partition.partition, breaks);
    let mut next = 0;
    loop {
        let records = read_page(log, partition, next, end).await?;
        let Some(last) = records.last() else { break };
        next = last.offset + 1;
        records.iter().for_each(|record| locator.record(record));
    }
    locator.classify(findings);
    Ok(())
}

/// Every transaction a command in the log started must have ended, or be young.
async fn check_commands(
    log: &dyn EventLog,
    ends: &LogEnds,
    fold: &LedgerFold,
    settings: &VerifySettings,
    report: &mut VerifyReport,
    findings: &mut Findings,
) -> Result<(), ProjectionError> {
    let mut seen: HashSet<TransactionId> = HashSet::new();
    for (partition, end) in ends.of(Topic::Commands) {
        let mut next = 0;
        loop {
            let records = read_page(log, partition, next, end).await?;
            let Some(last) = records.last() else { break };
            next = last.offset + 1;
            for record in &records {
                report.commands_checked += 1;
                check_command(record, fold, settings, &mut seen, findings);
            }
        }
    }
    let started_without_command = fold.started.difference(&seen).count();
    report.transactions = (seen.len() + started_without_command) as u64;
    Ok(())
}

fn check_command(
    record: &Record,
    fold: &LedgerFold,
    settings: &VerifySettings,
    seen: &mut HashSet<TransactionId>,
    findings: &mut Findings,
) {
    let at = |finding: Finding| finding.at(record.topic, record.partition, record.offset);
    let Ok(command) = CommandEnvelope::from_json(&record.payload) else {
        let detail = "unreadable: the decider skipped it".to_owned();
        findings.push(at(Finding::new(FindingKind::CommandUnreadable, detail)));
        return;
    };
    let Some(transaction_id) = started_transaction(&command.command) else {
        return;
    };
    // A command repeated by a client's retry names the same transaction.
    if !seen.insert(transaction_id) || fold.finished.contains(&transaction_id) {
        return;
    }
    let age_ms = settings.now.timestamp_millis() - record.timestamp_ms;
    let (kind, state) = match age_ms > settings.pending_limit_ms {
        true => (FindingKind::TransactionUnfinished, "past the pending limit"),
        false => (FindingKind::TransactionPending, "within the pending limit"),
    };
    let detail = format!(
        "transaction {transaction_id} has no final status {age_ms} ms after its command \
         entered the log, {state}"
    );
    let finding = Finding::new(kind, detail).in_stream(command.account_id, None);
    findings.push(at(finding));
}

/// The transaction a command starts, if it starts one.
fn started_transaction(command: &LedgerCommand) -> Option<TransactionId> {
    match command {
        LedgerCommand::AddMoney { transaction_id, .. }
        | LedgerCommand::SendAirtime { transaction_id, .. }
        | LedgerCommand::AdjustBalance { transaction_id, .. } => Some(*transaction_id),
        LedgerCommand::OpenAccount { .. }
        | LedgerCommand::UpdateAccount { .. }
        | LedgerCommand::CompleteAirtime { .. } => None,
    }
}

/// Every account row of the read store must hold the balance and held money the events lead
/// to, as of the events the store has applied.
async fn check_store_balances(
    snapshot: &mut Snapshot,
    fold: &LedgerFold,
    findings: &mut Findings,
) -> Result<(), ProjectionError> {
    let mut accounts = Cursor::new(&ACCOUNTS);
    while accounts.peek(snapshot).await?.is_some() {
        let Some(row) = accounts.pop() else { break };
        let Some(account_id) = row_account(&row) else {
            continue;
        };
        let stored = (
            row.value(&ACCOUNTS, "balance"),
            row.value(&ACCOUNTS, "held"),
        );
        let in_store = fold.accounts.get(&account_id).and_then(|a| a.in_store);
        let (Some(Cell::Money(balance)), Some(Cell::Money(held))) = stored else {
            continue;
        };
        let detail = match in_store {
            Some((expected, expected_held)) if (expected, expected_held) == (*balance, *held) => {
                continue;
            }
            Some((expected, expected_held)) => format!(
                "the read store shows a balance of {} with {} held; the events it applied \
                 lead to {expected} with {expected_held} held",
                balance.normalize(),
                held.normalize()
            ),
            None => format!(
                "the read store shows a balance of {} for an account the events it applied \
                 never opened",
                balance.normalize()
            ),
        };
        let finding = Finding::new(FindingKind::StoreBalanceMismatch, detail);
        findings.push(finding.in_stream(account_id, None));
    }
    Ok(())
}

fn row_account(row: &compare::Row) -> Option<AccountId> {
    match row.key.first()? {
        compare::KeyPart::Text(text) => text.parse().ok().map(AccountId),
        compare::KeyPart::Integer(_) => None,
    }
}

/// Replays the log up to the cut into the scratch store and compares its tables with the
/// live ones; returns how many rows it compared.
async fn compare_with_replay(
    log: &dyn EventLog,
    snapshot: &mut Snapshot,
    scratch: &ReadStore,
    cut: &[StoredOffset],
    settings: &VerifySettings,
    findings: &mut Findings,
) -> Result<u64, ProjectionError> {
    if let Err(error) = replay_until(log, scratch, &settings.projector, cut, &|_| {}).await {
        if is_operational(&error) {
            return Err(error);
        }
        let detail = format!(
            "replaying the log into a fresh store stopped, so the read tables were not \
             compared: {}",
            cause_chain(&error)
        );
        findings.push(Finding::new(FindingKind::ReplayFailed, detail));
        return Ok(0);
    }
    let mut replayed = scratch.snapshot().await?;
    let comparison = compare::compare(snapshot, &mut replayed).await?;
    for difference in &comparison.differences {
        findings.push(Finding::new(
            FindingKind::ReadStoreDiffers,
            difference.to_string(),
        ));
    }
    if comparison.differences_omitted > 0 {
        let detail = format!("{} more rows differ", comparison.differences_omitted);
        findings.push(Finding::new(FindingKind::ReadStoreDiffers, detail));
    }
    Ok(comparison.rows_compared)
}

/// Whether a replay failed because a store or the log could not be used, rather than because
/// of what the log holds. A database that refused a row (a duplicate event) is the log's
/// doing.
fn is_operational(error: &ProjectionError) -> bool {
    match error {
        ProjectionError::Database(sqlx::Error::Database(_)) => false,
        ProjectionError::Database(_)
        | ProjectionError::Migrate(_)
        | ProjectionError::Log(_)
        | ProjectionError::InvalidDatabaseUrl(_)
        | ProjectionError::InvalidSettings(_) => true,
        _ => false,
    }
}

fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}
