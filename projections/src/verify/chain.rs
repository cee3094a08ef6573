//! Walking one partition's hash chain: which events were altered, and where the chain breaks.
//!
//! The first pass reads the partition in offset order and checks each event against the hash
//! of the record before it. It only records where the chain breaks; telling a dropped event
//! from a moved one needs to know whether the hashes involved occur elsewhere in the
//! partition, which a second pass looks up for the few hashes at the breaks, so that neither
//! pass keeps more than a handful of hashes in memory.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use tally_commands::log::{Record, Topic};
use tally_domain::{AccountId, EventEnvelope, EventHash, Link};

use super::report::{Finding, FindingKind, Findings};

/// Where the chain breaks: the event at `offset` names `named` as the hash before it, but the
/// record before it (at `after_offset`, or none for the first) has `expected`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Break {
    offset: u64,
    after_offset: Option<u64>,
    expected: EventHash,
    named: EventHash,
    account_id: AccountId,
    sequence: u64,
}

/// The first pass over one partition.
pub(super) struct ChainWalk {
    partition: u32,
    head: EventHash,
    head_offset: Option<u64>,
    breaks: Vec<Break>,
    scratch: Vec<u8>,
}

/// The two hash fields of a stored event, read without the rest, which may not decode.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChainFields {
    previous_hash: Option<EventHash>,
    hash: Option<EventHash>,
}

fn chain_fields(payload: &[u8]) -> Option<ChainFields> {
    serde_json::from_slice(payload).ok()
}

impl ChainWalk {
    pub fn new(partition: u32) -> ChainWalk {
        ChainWalk {
            partition,
            head: EventHash::GENESIS,
            head_offset: None,
            breaks: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Checks the next event of the partition.
    pub fn event(&mut self, offset: u64, envelope: &EventEnvelope, findings: &mut Findings) {
        let finding = |kind, detail: String| {
            Finding::new(kind, detail)
                .at(Topic::Events, self.partition, offset)
                .in_stream(envelope.account_id, Some(envelope.sequence))
        };
        let link = envelope.check_link(&self.head, &mut self.scratch);
        if matches!(link, Link::Altered | Link::AlteredAndBroken) {
            let detail = "altered: its hash does not match its content".to_owned();
            findings.push(finding(FindingKind::EventAltered, detail));
        }
        if link == Link::Unhashed {
            let detail = "it carries no hash, so nothing proves it unchanged".to_owned();
            findings.push(finding(FindingKind::EventUnhashed, detail));
        }
        if let (Some(named), Some(hash)) = (envelope.previous_hash, envelope.hash) {
            if named != self.head {
                self.breaks.push(Break {
                    offset,
                    after_offset: self.head_offset,
                    expected: self.head,
                    named,
                    account_id: envelope.account_id,
                    sequence: envelope.sequence,
                });
            }
            self.advance(offset, hash);
        }
    }

    /// Follows the chain past a record that does not decode as an event, when its hash at
    /// least can be read, so that the event after it is not reported too.
    pub fn unreadable(&mut self, record: &Record) {
        if let Some(hash) = chain_fields(&record.payload).and_then(|fields| fields.hash) {
            self.advance(record.offset, hash);
        }
    }

    fn advance(&mut self, offset: u64, hash: EventHash) {
        self.head = hash;
        self.head_offset = Some(offset);
    }

    pub fn into_breaks(self) -> Vec<Break> {
        self.breaks
    }
}

/// The second pass over a partition with breaks: where the hashes at the breaks occur.
pub(super) struct BreakLocator {
    partition: u32,
    breaks: Vec<Break>,
    /// The hashes the breaks expected before them, and those they named instead.
    expected: HashSet<EventHash>,
    named: HashSet<EventHash>,
    /// For each hash a break expected before it, the event that names it as its previous.
    successor_of: HashMap<EventHash, u64>,
    /// For each hash a break named as its previous, the event that has it.
    holder_of: HashMap<EventHash, u64>,
}

impl BreakLocator {
    pub fn new(partition: u32, breaks: Vec<Break>) -> BreakLocator {
        BreakLocator {
            partition,
            expected: breaks.iter().map(|broken| broken.expected).collect(),
            named: breaks.iter().map(|broken| broken.named).collect(),
            breaks,
            successor_of: HashMap::new(),
            holder_of: HashMap::new(),
        }
    }

    /// Looks at one record of the partition again.
    pub fn record(&mut self, record: &Record) {
        let Some(fields) = chain_fields(&record.payload) else {
            return;
        };
        let expected = fields
            .previous_hash
            .filter(|hash| self.expected.contains(hash));
        if let Some(previous) = expected {
            self.successor_of.entry(previous).or_insert(record.offset);
        }
        if let Some(hash) = fields.hash.filter(|hash| self.named.contains(hash)) {
            self.holder_of.entry(hash).or_insert(record.offset);
        }
    }

    /// A finding per break: out of order when the hashes around it occur elsewhere in the
    /// partition, missing when they occur nowhere.
    pub fn classify(self, findings: &mut Findings) {
        for broken in &self.breaks {
            let successor =
                (self.successor_of.get(&broken.expected)).filter(|o| **o != broken.offset);
            let holder = self.holder_of.get(&broken.named);
            let after = match broken.after_offset {
                Some(offset) => format!("offset {offset}"),
                None => "the start of the partition".to_owned(),
            };
            let (kind, detail) = match (successor, holder) {
                (None, None) => (
                    FindingKind::EventMissing,
                    format!(
                        "missing: an event between {after} and this one is gone (the hash it \
                         names before it is held by no event)"
                    ),
                ),
                (successor, holder) => (
                    FindingKind::EventOutOfOrder,
                    format!(
                        "out of order: it follows the event at {}, not the one at {after}; \
                         the event that follows {after} is at {}",
                        describe(holder.copied()),
                        describe(successor.copied())
                    ),
                ),
            };
            let finding = Finding::new(kind, detail)
                .at(Topic::Events, self.partition, broken.offset)
                .in_stream(broken.account_id, Some(broken.sequence));
            findings.push(finding);
        }
    }
}

fn describe(offset: Option<u64>) -> String {
    match offset {
        Some(offset) => format!("offset {offset}"),
        None => "no offset of this partition".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use tally_domain::TransactionId;

    /// Linked records of one partition: two accounts' events, interleaved.
    async fn linked_records() -> Vec<Record> {
        let (mut ada, mut bob) = (Stream::new(1), Stream::new(2));
        let mut records = ada.decide(open()).await;
        records.extend(bob.decide(open()).await);
        records.extend(ada.decide(add_money(TransactionId::new(), "10")).await);
        records.extend(bob.decide(add_money(TransactionId::new(), "20")).await);
        let mut head = EventHash::GENESIS;
        for (offset, record) in records.iter_mut().enumerate() {
            let mut envelope = EventEnvelope::from_json(&record.payload).unwrap();
            record.payload = envelope.link(head);
            record.offset = offset as u64;
            record.partition = 0;
            head = envelope.hash.unwrap();
        }
        records
    }

    fn walk(records: &[Record]) -> Vec<Finding> {
        let mut findings = Findings::default();
        let mut chain = ChainWalk::new(0);
        for record in records {
            match EventEnvelope::from_json(&record.payload) {
                Ok(envelope) => chain.event(record.offset, &envelope, &mut findings),
                Err(_) => chain.unreadable(record),
            }
        }
        let breaks = chain.into_breaks();
        if !breaks.is_empty() {
            let mut locator = BreakLocator::new(0, breaks);
            records.iter().for_each(|record| locator.record(record));
            locator.classify(&mut findings);
        }
        findings.kept().to_vec()
    }

    fn kinds_at(findings: &[Finding]) -> Vec<(FindingKind, u64)> {
        let mut found: Vec<_> = (findings.iter())
            .map(|finding| (finding.kind, finding.offset.unwrap_or(u64::MAX)))
            .collect();
        found.sort_by_key(|(kind, offset)| (*offset, kind.code()));
        found
    }

    #[tokio::test]
    async fn an_intact_partition_has_no_findings() {
        assert_eq!(walk(&linked_records().await), Vec::new());
    }

    #[tokio::test]
    async fn an_edited_event_is_altered_and_the_chain_goes_on_after_it() {
        let mut records = linked_records().await;
        let edited = String::from_utf8(records[3].payload.clone()).unwrap();
        records[3].payload = edited.replace("\"10.00\"", "\"99.00\"").into_bytes();

        assert_eq!(
            kinds_at(&walk(&records)),
            vec![(FindingKind::EventAltered, 3)]
        );
    }

    #[tokio::test]
    async fn a_dropped_event_makes_the_next_one_name_a_hash_no_event_holds() {
        let mut records = linked_records().await;
        records.remove(4);

        assert_eq!(
            kinds_at(&walk(&records)),
            vec![(FindingKind::EventMissing, 5)]
        );
    }

    #[tokio::test]
    async fn swapped_events_are_out_of_order_where_each_landed() {
        let mut records = linked_records().await;
        let (first, second) = (records[2].payload.clone(), records[6].payload.clone());
        records[2].payload = second;
        records[6].payload = first;

        let found = kinds_at(&walk(&records));

        assert!(
            found
                .iter()
                .all(|(kind, _)| *kind == FindingKind::EventOutOfOrder)
        );
        let offsets: Vec<u64> = found.iter().map(|(_, offset)| *offset).collect();
        assert_eq!(offsets, vec![2, 3, 6, 7]);
    }

    #[tokio::test]
    async fn an_event_moved_to_the_start_says_where_its_place_was() {
        let mut records = linked_records().await;
        let moved = records.remove(3);
        records.insert(0, moved);
        for (offset, record) in records.iter_mut().enumerate() {
            record.offset = offset as u64;
        }

        let findings = walk(&records);

        assert_eq!(findings[0].kind, FindingKind::EventOutOfOrder);
        assert_eq!(findings[0].offset, Some(0));
        assert!(
            findings[0].detail.contains("the start of the partition"),
            "{}",
            findings[0]
        );
    }

    #[tokio::test]
    async fn events_without_hashes_are_each_reported_unhashed() {
        let mut stream = Stream::new(1);
        let records = stream.decide(open()).await;

        let found = kinds_at(&walk(&records));

        assert_eq!(found, vec![(FindingKind::EventUnhashed, 0)]);
    }
}
