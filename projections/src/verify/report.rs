//! What an audit found: findings, each with a stable code, a severity and the coordinates of
//! what it is about, and the report that sums them up.

use std::fmt::{self, Write as _};

use serde::Serialize;
use tally_commands::log::Topic;
use tally_domain::AccountId;

/// Findings kept in a report; further ones are only counted. A log broken in more places than
/// this is broken everywhere, and the first findings say where it starts.
pub const FINDINGS_KEPT_MAX: usize = 10_000;

/// Whether a finding fails the audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Something the history does not explain: the audit fails.
    Failure,
    /// Worth knowing, and normal in a running ledger (an open reservation, a young pending
    /// transaction, a read store still catching up).
    Information,
}

/// What a finding is about. The codes are stable and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The event's hash does not match its content: it was changed after it was written.
    EventAltered,
    /// The event names a previous hash that no event in the partition has: one or more
    /// events before it are missing.
    EventMissing,
    /// The event is intact but not where its chain puts it: events were moved.
    EventOutOfOrder,
    /// The event carries no hashes.
    EventUnhashed,
    /// The event's bytes do not decode as an event.
    EventUnreadable,
    /// An account's stream skips sequence numbers.
    SequenceGap,
    /// An account's stream repeats or goes back in sequence numbers.
    SequenceRepeated,
    /// A money event states a balance its amounts do not lead to.
    BalanceMismatch,
    /// A reservation event states held money its amounts do not lead to.
    HeldMismatch,
    /// An account's credits less its debits and posted reservations are not its balance.
    MoneyNotConserved,
    /// An account's balance went below zero.
    NegativeBalance,
    /// An account's open reservations held more than its balance.
    HoldsExceedBalance,
    /// A reservation was posted or voided that was never made, or for another amount.
    ReservationUnknown,
    /// A transaction reserved money twice.
    ReservationRepeated,
    /// A reservation is neither posted nor voided yet.
    ReservationOpen,
    /// The read store's balance or held money is not what the events lead to.
    StoreBalanceMismatch,
    /// A transaction whose command is in the log has no final status, past the pending limit.
    TransactionUnfinished,
    /// A transaction without a final status yet, younger than the pending limit.
    TransactionPending,
    /// A command's bytes do not decode; the decider skipped it.
    CommandUnreadable,
    /// A row of the read store differs from the replay of the log.
    ReadStoreDiffers,
    /// Replaying the log into a fresh store stopped: the log contradicts itself.
    ReplayFailed,
    /// The read store says it applied records the log does not hold.
    ReadStoreAheadOfLog,
    /// The read store has not applied the last records of the log yet.
    ReadStoreBehind,
}

impl FindingKind {
    pub fn code(self) -> &'static str {
        match self {
            FindingKind::EventAltered => "event_altered",
            FindingKind::EventMissing => "event_missing",
            FindingKind::EventOutOfOrder => "event_out_of_order",
            FindingKind::EventUnhashed => "event_unhashed",
            FindingKind::EventUnreadable => "event_unreadable",
            FindingKind::SequenceGap => "sequence_gap",
            FindingKind::SequenceRepeated => "sequence_repeated",
            FindingKind::BalanceMismatch => "balance_mismatch",
            FindingKind::HeldMismatch => "held_mismatch",
            FindingKind::MoneyNotConserved => "money_not_conserved",
            FindingKind::NegativeBalance => "negative_balance",
            FindingKind::HoldsExceedBalance => "holds_exceed_balance",
            FindingKind::ReservationUnknown => "reservation_unknown",
            FindingKind::ReservationRepeated => "reservation_repeated",
            FindingKind::ReservationOpen => "reservation_open",
            FindingKind::StoreBalanceMismatch => "store_balance_mismatch",
            FindingKind::TransactionUnfinished => "transaction_unfinished",
            FindingKind::TransactionPending => "transaction_pending",
            FindingKind::CommandUnreadable => "command_unreadable",
            FindingKind::ReadStoreDiffers => "read_store_differs",
            FindingKind::ReplayFailed => "replay_failed",
            FindingKind::ReadStoreAheadOfLog => "read_store_ahead_of_log",
            FindingKind::ReadStoreBehind => "read_store_behind",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            FindingKind::ReservationOpen
            | FindingKind::TransactionPending
            | FindingKind::CommandUnreadable
            | FindingKind::ReadStoreBehind => Severity::Information,
            _ => Severity::Failure,
        }
    }
}

/// One finding, with whatever coordinates it has.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    #[serde(serialize_with = "kind_code")]
    pub kind: FindingKind,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "topic_name")]
    pub topic: Option<Topic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<AccountId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    pub detail: String,
}

fn kind_code<S: serde::Serializer>(kind: &FindingKind, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind.code())
}

fn topic_name<S: serde::Serializer>(
    topic: &Option<Topic>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match topic {
        Some(topic) => serializer.serialize_str(topic.name()),
        None => serializer.serialize_none(),
    }
}

impl Finding {
    pub fn new(kind: FindingKind, detail: impl Into<String>) -> Finding {
        Finding {
            kind,
            severity: kind.severity(),
            topic: None,
            partition: None,
            offset: None,
            account_id: None,
            sequence: None,
            detail: detail.into(),
        }
    }

    /// Places the finding at a record of the log.
    pub fn at(mut self, topic: Topic, partition: u32, offset: u64) -> Finding {
        self.topic = Some(topic);
        self.partition = Some(partition);
        self.offset = Some(offset);
        self
    }

    /// Names the account stream, and the place in it, the finding is about.
    pub fn in_stream(mut self, account_id: AccountId, sequence: Option<u64>) -> Finding {
        self.account_id = Some(account_id);
        self.sequence = sequence;
        self
    }
}

/// One line: `FAIL event_altered tally.events partition 1 offset 7 account … sequence 3:
/// its hash does not match its content`.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Failure => "FAIL",
            Severity::Information => "INFO",
        };
        write!(f, "{level} {}", self.kind.code())?;
        if let Some(topic) = self.topic {
            write!(f, " {}", topic.name())?;
        }
        if let Some(partition) = self.partition {
            write!(f, " partition {partition}")?;
        }
        if let Some(offset) = self.offset {
            write!(f, " offset {offset}")?;
        }
        if let Some(account_id) = self.account_id {
            write!(f, " account {account_id}")?;
        }
        if let Some(sequence) = self.sequence {
            write!(f, " sequence {sequence}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Findings as they are found: the first [`FINDINGS_KEPT_MAX`] kept, every one counted.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    kept: Vec<Finding>,
    omitted: u64,
    failures: u64,
    information: u64,
}

impl Findings {
    pub fn push(&mut self, finding: Finding) {
        match finding.severity {
            Severity::Failure => self.failures += 1,
            Severity::Information => self.information += 1,
        }
        if self.kept.len() < FINDINGS_KEPT_MAX {
            self.kept.push(finding);
        } else {
            self.omitted += 1;
        }
    }

    /// The findings kept so far.
    #[cfg(test)]
    pub fn kept(&self) -> &[Finding] {
        &self.kept
    }
}

/// What `tally verify` reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// Records of the events topic read, over every partition.
    pub events_checked: u64,
    /// Records of the commands topic read.
    pub commands_checked: u64,
    /// Account streams in the events.
    pub accounts: u64,
    /// Transactions started by a command or an event.
    pub transactions: u64,
    /// Rows of the read tables compared with the replay.
    pub rows_compared: u64,
    /// Findings that fail the audit, counted in full.
    pub failures: u64,
    /// Findings for information, counted in full.
    pub information: u64,
    /// The first findings, in the order they were found.
    pub findings: Vec<Finding>,
    /// Findings found beyond those kept.
    pub findings_omitted: u64,
    /// `CLEAN`, or `FAILED` when any finding fails the audit.
    pub verdict: Verdict,
}

/// The outcome of an audit, as its report states it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// No finding fails the audit; information may be listed.
    #[default]
    Clean,
    /// At least one finding fails it.
    Failed,
}

impl VerifyReport {
    pub(crate) fn with_findings(mut self, findings: Findings) -> VerifyReport {
        self.failures = findings.failures;
        self.information = findings.information;
        self.findings = findings.kept;
        self.findings_omitted = findings.omitted;
        self.verdict = match self.failures {
            0 => Verdict::Clean,
            _ => Verdict::Failed,
        };
        self
    }

    /// Whether the audit failed: any finding of [`Severity::Failure`].
    pub fn failed(&self) -> bool {
        self.failures > 0
    }

    /// The report as text: one line per finding, then the summary.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for finding in &self.findings {
            let _ = writeln!(text, "{finding}");
        }
        if self.findings_omitted > 0 {
            let _ = writeln!(text, "... and {} findings more", self.findings_omitted);
        }
        let verdict = match self.verdict {
            Verdict::Clean => "CLEAN",
            Verdict::Failed => "FAILED",
        };
        let lines = [
            ("events checked", self.events_checked),
            ("commands checked", self.commands_checked),
            ("accounts", self.accounts),
            ("transactions", self.transactions),
            ("rows compared", self.rows_compared),
            ("failures", self.failures),
            ("information", self.information),
        ];
        for (name, value) in lines {
            let _ = writeln!(text, "{name:<18} {value}");
        }
        let _ = writeln!(text, "{:<18} {verdict}", "verdict");
        text
    }
}
