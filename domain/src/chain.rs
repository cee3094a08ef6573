//! The hash chain of the events topic: every event names the hash of the event before it in
//! its partition, and its own hash covers that name and the event's canonical bytes.
//!
//! An event's hash is `SHA-256(previous hash || canonical bytes)`, with the 32 raw bytes of
//! the previous hash first. The first event of a partition chains from [`EventHash::GENESIS`],
//! 32 zero bytes. The canonical bytes are the envelope's compact JSON without its two hash
//! fields, in the envelope's field order (`eventId`, `accountId`, `sequence`, `eventType`,
//! `eventVersion`, `occurredAt`, `correlationId`, `causationId`, `event`), exactly as
//! `serde_json` writes them; the stored envelope is the same JSON with `previousHash` and
//! `hash` (lowercase hex) added at the end. A reader recomputes the canonical bytes from the
//! decoded envelope, so a change that keeps every value (spacing, key order) keeps the hash,
//! and a change of any value breaks it.
//!
//! Linking is the decider's job, as the only writer of a partition: it knows the chain head
//! and sets both hashes while it builds a batch. Checking is the auditor's. Nothing here does
//! I/O.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event::{EventEnvelope, LedgerEvent};
use crate::ids::{AccountId, EventId};

/// Bytes of a SHA-256 hash.
pub const HASH_BYTES: usize = 32;

/// Room reserved for one stored envelope. Every money and transaction event stays well under
/// it (about 600 bytes), so its payload is written without growing the buffer; only an
/// account event with a long billing address grows it.
const PAYLOAD_BYTES_RESERVED: usize = 1_024;

/// A SHA-256 hash in the chain, shown and stored as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventHash([u8; HASH_BYTES]);

/// Why text is not an event hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an event hash is 64 hex digits")]
pub struct HashTextError;

impl EventHash {
    /// What the first event of every partition chains from.
    pub const GENESIS: EventHash = EventHash([0; HASH_BYTES]);

    pub fn from_bytes(bytes: [u8; HASH_BYTES]) -> EventHash {
        EventHash(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; HASH_BYTES] {
        &self.0
    }

    /// Parses 64 hex digits, either case.
    pub fn parse(text: &str) -> Result<EventHash, HashTextError> {
        let mut bytes = [0; HASH_BYTES];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| HashTextError)?;
        Ok(EventHash(bytes))
    }

    /// The hash as lowercase hex, on the stack.
    fn hex(&self) -> [u8; 2 * HASH_BYTES] {
        let mut text = [0; 2 * HASH_BYTES];
        // The buffer is exactly twice the hash, which is all `encode_to_slice` asks.
        let _ = hex::encode_to_slice(self.0, &mut text);
        text
    }

    fn write_hex(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hex());
    }
}

impl fmt::Display for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.hex();
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventHash({self})")
    }
}

impl Serialize for EventHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.hex();
        let text = std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

impl<'de> Deserialize<'de> for EventHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<EventHash, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        EventHash::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The hash of an event whose canonical bytes are `canonical`, after `previous`.
pub fn chain_hash(previous: &EventHash, canonical: &[u8]) -> EventHash {
    let mut hasher = Sha256::new();
    hasher.update(previous.0);
    hasher.update(canonical);
    EventHash(hasher.finalize().into())
}

/// The envelope's fields that its hash covers, in their fixed order. Kept apart from the
/// envelope's own serialization so that what is hashed is written down in one place; a test
/// checks that the two agree.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Canonical<'a> {
    event_id: &'a EventId,
    account_id: &'a AccountId,
    sequence: u64,
    event_type: &'a str,
    event_version: u32,
    occurred_at: &'a DateTime<Utc>,
    correlation_id: &'a Uuid,
    causation_id: &'a Uuid,
    event: &'a LedgerEvent,
}

impl<'a> Canonical<'a> {
    fn of(envelope: &'a EventEnvelope) -> Canonical<'a> {
        Canonical {
            event_id: &envelope.event_id,
            account_id: &envelope.account_id,
            sequence: envelope.sequence,
            event_type: &envelope.event_type,
            event_version: envelope.event_version,
            occurred_at: &envelope.occurred_at,
            correlation_id: &envelope.correlation_id,
            causation_id: &envelope.causation_id,
            event: &envelope.event,
        }
    }
}

impl EventEnvelope {
    /// Appends the envelope's canonical bytes to `out`.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        // Strings, integers, decimals as strings and string-keyed maps: writing to a Vec
        // cannot fail.
        serde_json::to_writer(&mut *out, &Canonical::of(self))
            .expect("an event envelope always serializes");
    }

    /// Links the envelope into its partition's chain after the event whose hash is `previous`,
    /// and returns the JSON to store, the same bytes [`EventEnvelope::to_json`] gives.
    ///
    /// The envelope is serialized once: its canonical bytes are hashed where they lie, and the
    /// hash fields are then written after them, before the closing brace.
    pub fn link(&mut self, previous: EventHash) -> Vec<u8> {
        let mut payload = Vec::with_capacity(PAYLOAD_BYTES_RESERVED);
        self.write_canonical(&mut payload);
        let hash = chain_hash(&previous, &payload);
        self.previous_hash = Some(previous);
        self.hash = Some(hash);

        // The canonical JSON is an object, so its last byte is its closing brace.
        payload.pop();
        payload.extend_from_slice(br#","previousHash":""#);
        previous.write_hex(&mut payload);
        payload.extend_from_slice(br#"","hash":""#);
        hash.write_hex(&mut payload);
        payload.extend_from_slice(br#""}"#);
        payload
    }

    /// The hash the envelope's own content gives after the previous hash it names, or `None`
    /// when it carries no hashes. `scratch` is cleared and reused for the canonical bytes.
    pub fn recomputed_hash(&self, scratch: &mut Vec<u8>) -> Option<EventHash> {
        let previous = self.previous_hash?;
        scratch.clear();
        self.write_canonical(scratch);
        Some(chain_hash(&previous, scratch))
    }
}

/// What an event's own fields say about its place in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Its hash matches its content, and it names `head` as the event before it.
    Linked,
    /// Its hash does not match its content: the event was changed after it was written.
    Altered,
    /// Its hash matches its content, but the event before it in the partition is not the one
    /// it names: an event was dropped, or events were moved.
    Broken,
    /// Its hash does not match its content and it names another event before it.
    AlteredAndBroken,
    /// It carries no hashes: written before events were chained, or stripped of them.
    Unhashed,
}

impl EventEnvelope {
    /// Checks the envelope against the hash of the event before it in its partition.
    pub fn check_link(&self, head: &EventHash, scratch: &mut Vec<u8>) -> Link {
        let (Some(previous), Some(hash)) = (self.previous_hash, self.hash) else {
            return Link::Unhashed;
        };
        let intact = self.recomputed_hash(scratch) == Some(hash);
        match (intact, previous == *head) {
            (true, true) => Link::Linked,
            (false, true) => Link::Altered,
            (true, false) => Link::Broken,
            (false, false) => Link::AlteredAndBroken,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use rust_decimal::Decimal;

    use super::*;
    use crate::account::AccountEvent;
    use crate::event::{EVENT_VERSION, event_id_for};
    use crate::ids::TransactionId;
    use crate::money::{Amount, Currency};

    fn credit(sequence: u64, amount: &str, balance_after: &str) -> EventEnvelope {
        let command = Uuid::from_u128(sequence.into());
        let amount = Amount::parse(amount, Currency::USD).unwrap();
        let event = AccountEvent::AccountCredited {
            transaction_id: TransactionId(Uuid::from_u128(7)),
            amount,
            balance_after: Decimal::from_str_exact(balance_after).unwrap(),
        };
        EventEnvelope {
            event_id: event_id_for(command, 0),
            account_id: AccountId(Uuid::from_u128(1)),
            sequence,
            event_type: "AccountCredited".to_owned(),
            event_version: EVENT_VERSION,
            occurred_at: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            correlation_id: command,
            causation_id: command,
            event: event.into(),
            previous_hash: None,
            hash: None,
        }
    }

    /// Three linked events of one partition and their stored payloads.
    fn chain() -> Vec<(EventEnvelope, Vec<u8>)> {
        let mut head = EventHash::GENESIS;
        let mut linked = Vec::new();
        for (sequence, balance) in [(1, "10.00"), (2, "20.00"), (3, "30.00")] {
            let mut envelope = credit(sequence, "10.00", balance);
            let payload = envelope.link(head);
            head = envelope.hash.unwrap();
            linked.push((envelope, payload));
        }
        linked
    }

    #[test]
    fn a_linked_payload_is_the_envelopes_json_and_reads_back_whole() {
        for (envelope, payload) in chain() {
            assert_eq!(payload, envelope.to_json());
            assert_eq!(EventEnvelope::from_json(&payload).unwrap(), envelope);
        }
    }

    #[test]
    fn the_canonical_bytes_are_the_stored_json_without_its_hash_fields() {
        let (envelope, payload) = chain().remove(1);
        let mut canonical = Vec::new();
        envelope.write_canonical(&mut canonical);

        let mut unhashed = envelope.clone();
        unhashed.previous_hash = None;
        unhashed.hash = None;
        assert_eq!(canonical, unhashed.to_json());
        let suffix = format!(
            r#","previousHash":"{}","hash":"{}"}}"#,
            envelope.previous_hash.unwrap(),
            envelope.hash.unwrap()
        );
        assert_eq!(payload.len(), canonical.len() - 1 + suffix.len());
        assert!(payload.ends_with(suffix.as_bytes()));
    }

    #[test]
    fn each_hash_is_sha256_of_the_previous_hash_and_the_canonical_bytes() {
        let linked = chain();
        let mut head = EventHash::GENESIS;
        for (envelope, _) in &linked {
            let mut input = head.as_bytes().to_vec();
            envelope.write_canonical(&mut input);
            let expected: [u8; HASH_BYTES] = Sha256::digest(&input).into();
            assert_eq!(envelope.previous_hash, Some(head));
            assert_eq!(envelope.hash, Some(EventHash::from_bytes(expected)));
            head = EventHash::from_bytes(expected);
        }
    }

    #[test]
    fn an_intact_chain_checks_linked_from_genesis() {
        let mut scratch = Vec::new();
        let mut head = EventHash::GENESIS;
        for (_, payload) in chain() {
            let stored = EventEnvelope::from_json(&payload).unwrap();
            assert_eq!(stored.check_link(&head, &mut scratch), Link::Linked);
            head = stored.hash.unwrap();
        }
    }

    #[test]
    fn an_edited_amount_no_longer_matches_its_hash() {
        let (_, payload) = chain().remove(0);
        let edited = String::from_utf8(payload)
            .unwrap()
            .replace(r#""amount":"10.00""#, r#""amount":"11.00""#);
        let stored = EventEnvelope::from_json(edited.as_bytes()).unwrap();

        let link = stored.check_link(&EventHash::GENESIS, &mut Vec::new());

        assert_eq!(link, Link::Altered);
    }

    #[test]
    fn a_dropped_event_breaks_the_link_of_the_one_after_it() {
        let linked = chain();
        let first = linked[0].0.hash.unwrap();
        let third = &linked[2].0;

        assert_eq!(third.check_link(&first, &mut Vec::new()), Link::Broken);
    }

    #[test]
    fn spacing_and_key_order_are_not_content() {
        let (envelope, payload) = chain().remove(0);
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        let stored = EventEnvelope::from_json(&pretty).unwrap();

        let link = stored.check_link(&EventHash::GENESIS, &mut Vec::new());

        assert_eq!((link, stored), (Link::Linked, envelope));
    }

    #[test]
    fn an_envelope_without_hashes_reads_back_unhashed() {
        let mut envelope = credit(1, "1.00", "1.00");
        let json = envelope.to_json();
        assert!(!String::from_utf8_lossy(&json).contains("hash"));

        let stored = EventEnvelope::from_json(&json).unwrap();

        assert_eq!(
            stored.check_link(&EventHash::GENESIS, &mut Vec::new()),
            Link::Unhashed
        );
        envelope.link(EventHash::GENESIS);
        assert_ne!(envelope.hash, None);
    }

    #[test]
    fn hashes_are_lowercase_hex_and_parse_back() {
        let hash = chain()[0].0.hash.unwrap();
        let text = hash.to_string();

        assert_eq!(text.len(), 64);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(EventHash::parse(&text.to_uppercase()), Ok(hash));
        assert_eq!(EventHash::parse("abc"), Err(HashTextError));
        assert_eq!(EventHash::GENESIS.to_string(), "0".repeat(64));
    }

    #[test]
    fn a_money_event_fits_the_room_reserved_for_its_payload() {
        let mut envelope = credit(u64::MAX, "1000000000000.00", "1000000000000000.00");

        let payload = envelope.link(EventHash::GENESIS);

        assert!(payload.len() <= PAYLOAD_BYTES_RESERVED, "{}", payload.len());
    }
}
