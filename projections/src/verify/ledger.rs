//! Folding every account's events in log order, independently of their hashes and of the
//! domain's own aggregates: the balance each event states must be the one its amounts lead
//! to, no balance may go below zero or under its holds, every reservation must be made before
//! it is posted or voided, and at the end each account's credits less its debits and posted
//! reservations must be its balance.
//!
//! The domain's aggregates stop at the first broken invariant (a corrupt log must not spread
//! wrong balances); an audit goes on and reports every one. After a mismatch the fold takes
//! the balance the event states, so that each later event is judged on its own and one bad
//! amount is reported once, where it is, and once more in the account's totals.

use std::collections::{HashMap, HashSet};

use rust_decimal::Decimal;
use tally_commands::log::Topic;
use tally_domain::{
    AccountEvent, AccountId, Amount, EventEnvelope, LedgerEvent, TransactionEvent, TransactionId,
};

use super::report::{Finding, FindingKind, Findings};

/// Where an event sits: its partition of the events topic and its offset.
#[derive(Clone, Copy, Debug)]
pub(super) struct At {
    pub partition: u32,
    pub offset: u64,
    /// Whether the live read store has applied this event.
    pub within_store: bool,
}

/// The money of one account as its events lead to it.
#[derive(Debug, Default)]
pub(super) struct AccountFold {
    last_sequence: u64,
    balance: Decimal,
    held: Decimal,
    holds: HashMap<TransactionId, Decimal>,
    credits: Decimal,
    debits: Decimal,
    posted: Decimal,
    /// Balance and held money as of the last event the read store has applied.
    pub in_store: Option<(Decimal, Decimal)>,
}

/// The fold of every account of the log.
#[derive(Debug, Default)]
pub(super) struct LedgerFold {
    pub accounts: HashMap<AccountId, AccountFold>,
    /// Transactions started by an event.
    pub started: HashSet<TransactionId>,
    /// Transactions that reached SUCCESSFUL or FAILED.
    pub finished: HashSet<TransactionId>,
}

/// One event being folded, with what a finding about it needs.
struct Folding<'a> {
    at: At,
    envelope: &'a EventEnvelope,
    findings: &'a mut Findings,
}

impl Folding<'_> {
    fn report(&mut self, kind: FindingKind, detail: String) {
        let finding = Finding::new(kind, detail)
            .at(Topic::Events, self.at.partition, self.at.offset)
            .in_stream(self.envelope.account_id, Some(self.envelope.sequence));
        self.findings.push(finding);
    }
}

impl LedgerFold {
    /// Folds the next event of its account's stream.
    pub fn event(&mut self, at: At, envelope: &EventEnvelope, findings: &mut Findings) {
        let mut folding = Folding {
            at,
            envelope,
            findings,
        };
        let account = self.accounts.entry(envelope.account_id).or_default();
        if !account.advance(&mut folding) {
            return;
        }
        match &envelope.event {
            LedgerEvent::Account(event) => account.apply(event, &mut folding),
            LedgerEvent::Transaction(event) => self.transaction(event),
        }
        if at.within_store
            && let Some(account) = self.accounts.get_mut(&envelope.account_id)
        {
            account.in_store = Some((account.balance, account.held));
        }
    }

    fn transaction(&mut self, event: &TransactionEvent) {
        let transaction_id = event.transaction_id();
        match event {
            TransactionEvent::TransactionStarted(_) => {
                self.started.insert(transaction_id);
            }
            TransactionEvent::TransactionSucceeded { .. }
            | TransactionEvent::TransactionFailed { .. } => {
                self.finished.insert(transaction_id);
            }
        }
    }

    /// The totals of every account, and the reservations still open.
    pub fn finish(&self, findings: &mut Findings) {
        for (account_id, account) in &self.accounts {
            account.finish(*account_id, findings);
        }
    }
}

impl AccountFold {
    /// Checks the event's sequence; false when it must not be folded (a repeat would count
    /// its money twice).
    fn advance(&mut self, folding: &mut Folding<'_>) -> bool {
        let (last, sequence) = (self.last_sequence, folding.envelope.sequence);
        if sequence <= last {
            let detail = format!("sequence {sequence} repeats or goes back: the last was {last}");
            folding.report(FindingKind::SequenceRepeated, detail);
            return false;
        }
        if sequence != last + 1 {
            let detail = format!("sequences {} to {} are missing", last + 1, sequence - 1);
            folding.report(FindingKind::SequenceGap, detail);
        }
        self.last_sequence = sequence;
        true
    }

    fn apply(&mut self, event: &AccountEvent, folding: &mut Folding<'_>) {
        match event {
            AccountEvent::AccountOpened { .. } | AccountEvent::AccountUpdated { .. } => {}
            AccountEvent::AccountCredited {
                amount,
                balance_after,
                ..
            } => {
                self.credits += amount.value();
                self.move_balance(amount.value(), *balance_after, folding);
            }
            AccountEvent::AccountDebited {
                amount,
                balance_after,
                ..
            } => {
                self.debits += amount.value();
                self.move_balance(-amount.value(), *balance_after, folding);
            }
            AccountEvent::FundsReserved {
                transaction_id,
                amount,
                held_after,
            } => self.reserve(*transaction_id, *amount, *held_after, folding),
            AccountEvent::ReservationPosted {
                transaction_id,
                amount,
                balance_after,
                held_after,
            } => {
                self.release(*transaction_id, *amount, *held_after, folding);
                self.posted += amount.value();
                self.move_balance(-amount.value(), *balance_after, folding);
            }
            AccountEvent::ReservationVoided {
                transaction_id,
                amount,
                held_after,
            } => self.release(*transaction_id, *amount, *held_after, folding),
        }
    }

    fn move_balance(&mut self, change: Decimal, stated: Decimal, folding: &mut Folding<'_>) {
        let computed = self.balance + change;
        if computed != stated {
            let detail = format!(
                "the event states a balance of {stated}; the amounts before it lead to {computed}"
            );
            folding.report(FindingKind::BalanceMismatch, detail);
        }
        if computed < Decimal::ZERO || stated < Decimal::ZERO {
            let detail = format!("the balance went below zero: {}", computed.min(stated));
            folding.report(FindingKind::NegativeBalance, detail);
        }
        self.balance = stated;
        self.check_holds(folding);
    }

    fn reserve(
        &mut self,
        transaction_id: TransactionId,
        amount: Amount,
        stated: Decimal,
        folding: &mut Folding<'_>,
    ) {
        if self.holds.insert(transaction_id, amount.value()).is_some() {
            let detail = format!("transaction {transaction_id} reserved money twice");
            folding.report(FindingKind::ReservationRepeated, detail);
        }
        self.move_held(amount.value(), stated, folding);
    }

    fn release(
        &mut self,
        transaction_id: TransactionId,
        amount: Amount,
        stated: Decimal,
        folding: &mut Folding<'_>,
    ) {
        match self.holds.remove(&transaction_id) {
            Some(held) if held == amount.value() => {}
            Some(held) => {
                let detail = format!(
                    "transaction {transaction_id} releases {} but reserved {held}",
                    amount.value()
                );
                folding.report(FindingKind::ReservationUnknown, detail);
            }
            None => {
                let detail =
                    format!("transaction {transaction_id} releases money it never reserved");
                folding.report(FindingKind::ReservationUnknown, detail);
            }
        }
        self.move_held(-amount.value(), stated, folding);
    }

    fn move_held(&mut self, change: Decimal, stated: Decimal, folding: &mut Folding<'_>) {
        let computed = self.held + change;
        if computed != stated {
            let detail = format!(
                "the event states {stated} held; the reservations before it lead to {computed}"
            );
            folding.report(FindingKind::HeldMismatch, detail);
        }
        self.held = stated;
        self.check_holds(folding);
    }

    fn check_holds(&self, folding: &mut Folding<'_>) {
        // A negative balance with nothing held is reported as such, not twice.
        if self.held > Decimal::ZERO && self.held > self.balance {
            let detail = format!("{} held exceeds the balance of {}", self.held, self.balance);
            folding.report(FindingKind::HoldsExceedBalance, detail);
        }
    }

    fn finish(&self, account_id: AccountId, findings: &mut Findings) {
        let totals = self.credits - self.debits - self.posted;
        if totals != self.balance {
            let detail = format!(
                "credits {} less debits {} and posted reservations {} make {totals}, but the \
                 events leave a balance of {}",
                self.credits, self.debits, self.posted, self.balance
            );
            let finding = Finding::new(FindingKind::MoneyNotConserved, detail);
            findings.push(finding.in_stream(account_id, None));
        }
        let mut open: Vec<_> = self.holds.iter().collect();
        open.sort();
        for (transaction_id, amount) in open {
            let detail =
                format!("transaction {transaction_id} holds {amount}, not yet posted or voided");
            let finding = Finding::new(FindingKind::ReservationOpen, detail);
            findings.push(finding.in_stream(account_id, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use tally_domain::ledger::AirtimeOutcome;

    use super::*;
    use crate::testing::*;

    /// Folds the records, after `edit` changed their envelopes, and returns the findings as
    /// (kind, sequence) pairs.
    fn fold(
        records: &[tally_commands::log::Record],
        edit: impl Fn(&mut EventEnvelope),
    ) -> Vec<(FindingKind, Option<u64>)> {
        let mut ledger = LedgerFold::default();
        let mut findings = Findings::default();
        for record in records {
            let mut envelope = EventEnvelope::from_json(&record.payload).unwrap();
            edit(&mut envelope);
            let at = At {
                partition: 0,
                offset: record.offset,
                within_store: true,
            };
            ledger.event(at, &envelope, &mut findings);
        }
        ledger.finish(&mut findings);
        (findings.kept().iter())
            .map(|finding| (finding.kind, finding.sequence))
            .collect()
    }

    async fn history() -> Vec<tally_commands::log::Record> {
        let mut stream = Stream::new(1);
        let airtime = TransactionId::new();
        let mut records = stream.decide(open()).await;
        records.extend(stream.decide(add_money(TransactionId::new(), "10")).await);
        records.extend(stream.decide(send_airtime(airtime, "4")).await);
        let delivered = AirtimeOutcome::Delivered {
            provider_reference: "ref".to_owned(),
        };
        records.extend(stream.decide(complete(airtime, delivered)).await);
        records.extend(stream.decide(send_airtime(TransactionId::new(), "1")).await);
        records
    }

    #[tokio::test]
    async fn an_honest_history_leaves_only_its_open_reservation() {
        let found = fold(&history().await, |_| {});

        assert_eq!(found, vec![(FindingKind::ReservationOpen, None)]);
    }

    #[tokio::test]
    async fn a_credit_whose_amount_was_raised_breaks_its_balance_and_the_totals() {
        let found = fold(&history().await, |envelope| {
            if let LedgerEvent::Account(AccountEvent::AccountCredited { amount, .. }) =
                &mut envelope.event
            {
                *amount = usd("100");
            }
        });

        assert!(
            found.contains(&(FindingKind::BalanceMismatch, Some(3))),
            "{found:?}"
        );
        assert!(
            found.contains(&(FindingKind::MoneyNotConserved, None)),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn a_posting_raised_with_its_balance_adds_up_but_goes_below_zero() {
        let found = fold(&history().await, |envelope| {
            if let LedgerEvent::Account(AccountEvent::ReservationPosted {
                amount,
                balance_after,
                ..
            }) = &mut envelope.event
            {
                *amount = usd("14");
                *balance_after = money("-4");
            }
        });

        assert!(
            found.contains(&(FindingKind::NegativeBalance, Some(7))),
            "{found:?}"
        );
        assert!(
            found.contains(&(FindingKind::ReservationUnknown, Some(7))),
            "{found:?}"
        );
        assert!(
            !found
                .iter()
                .any(|(kind, _)| *kind == FindingKind::MoneyNotConserved)
        );
    }

    #[tokio::test]
    async fn a_missing_sequence_is_a_gap_and_a_repeated_one_is_not_counted_twice() {
        let mut records = history().await;
        let repeated = records[2].clone();
        records.remove(5);
        records.insert(3, repeated);

        let found = fold(&records, |_| {});

        assert!(
            found.contains(&(FindingKind::SequenceRepeated, Some(3))),
            "{found:?}"
        );
        assert!(
            found.contains(&(FindingKind::SequenceGap, Some(7))),
            "{found:?}"
        );
    }
}
