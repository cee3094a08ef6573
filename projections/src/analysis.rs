//! The analysis tables: daily counts and amounts of transactions
//! (`daily_transaction_volumes`) and of airtime sends by destination
//! (`daily_airtime_destinations`), worked out in memory for one batch.
//!
//! Each transaction counts once, in the row of the UTC day it was created and of the status it
//! has now. A batch that changes a transaction takes what its row counted before the batch out
//! of that row and adds what it counts after: a status that moved, or a creation time that
//! moved to its command's, moves the transaction from one row to another. Summed over batches
//! these moves telescope, so the tables always equal a GROUP BY over `transactions` however
//! the log was cut into batches, and a replay builds the same rows.
//!
//! SQLite keeps money as text, which its arithmetic would turn into floats, so the sums are
//! made here, exactly, on the rows the batch loaded, and written back whole. Nothing here
//! does I/O; the projector loads the rows and writes what [`settle`] returns.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use tally_domain::{Currency, PhoneNumber, TransactionId, TransactionType};

use crate::error::ProjectionError;
use crate::queries::TransactionView;

/// The format of the `day` columns: an ISO 8601 calendar date, `2026-03-01`.
pub(crate) const DAY_FORMAT: &str = "%Y-%m-%d";

/// What a row of an analysis table counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub count: i64,
    pub amount: Decimal,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.count += other.count;
        self.amount += other.amount;
    }

    fn is_zero(self) -> bool {
        self.count == 0 && self.amount.is_zero()
    }
}

/// The key of a `daily_transaction_volumes` row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct VolumeKey {
    pub day: NaiveDate,
    pub transaction_type: &'static str,
    pub currency: Currency,
    pub status: &'static str,
}

/// The key of a `daily_airtime_destinations` row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DestinationKey {
    pub day: NaiveDate,
    /// The E.164 country calling code, without its `+`.
    pub calling_code: String,
    pub currency: Currency,
    pub status: &'static str,
}

/// How much each row of the analysis tables moves in one batch. Only rows that move are kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Deltas {
    pub volumes: BTreeMap<VolumeKey, Tally>,
    pub destinations: BTreeMap<DestinationKey, Tally>,
}

impl Deltas {
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty() && self.destinations.is_empty()
    }

    /// The days whose rows the batch moves, sorted and without repeats.
    pub fn days(&self) -> Vec<NaiveDate> {
        let volumes = self.volumes.keys().map(|key| key.day);
        let destinations = self.destinations.keys().map(|key| key.day);
        let mut days: Vec<NaiveDate> = volumes.chain(destinations).collect();
        days.sort_unstable();
        days.dedup();
        days
    }
}

/// The rows of the analysis tables a batch moves, as they stood before it.
#[derive(Debug, Default)]
pub(crate) struct Current {
    pub volumes: HashMap<VolumeKey, Tally>,
    pub destinations: HashMap<DestinationKey, Tally>,
}

/// What a batch writes to the analysis tables: rows in their new state, and rows whose count
/// fell to zero, to delete.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Settled {
    pub volumes: Vec<(VolumeKey, Tally)>,
    pub volumes_emptied: Vec<VolumeKey>,
    pub destinations: Vec<(DestinationKey, Tally)>,
    pub destinations_emptied: Vec<DestinationKey>,
}

/// What the transactions a batch changed move in the analysis tables: each one's row before
/// the batch (`before`, absent for a transaction the batch created) loses it, and its row
/// after the batch (`after`) gains it.
pub(crate) fn deltas(
    before: &HashMap<TransactionId, TransactionView>,
    after: &[TransactionView],
) -> Deltas {
    let mut deltas = Deltas::default();
    for transaction in after {
        if let Some(earlier) = before.get(&transaction.transaction_id) {
            count(&mut deltas, earlier, -1);
        }
        count(&mut deltas, transaction, 1);
    }
    deltas.volumes.retain(|_, tally| !tally.is_zero());
    deltas.destinations.retain(|_, tally| !tally.is_zero());
    deltas
}

/// Adds `sign` times what `transaction` counts to the rows it counts in.
fn count(deltas: &mut Deltas, transaction: &TransactionView, sign: i64) {
    let tally = Tally {
        count: sign,
        amount: Decimal::from(sign) * transaction.amount,
    };
    let day = transaction.created_at.date_naive();
    let status = transaction.status.as_str();
    let volume = VolumeKey {
        day,
        transaction_type: transaction.transaction_type.as_str(),
        currency: transaction.currency,
        status,
    };
    deltas.volumes.entry(volume).or_default().add(tally);
    if let Some(calling_code) = destination(transaction) {
        let key = DestinationKey {
            day,
            calling_code,
            currency: transaction.currency,
            status,
        };
        deltas.destinations.entry(key).or_default().add(tally);
    }
}

/// The calling code an airtime send tops up. Every SEND_AIRTIME row holds the E.164 number
/// its command was validated with; other types have no destination.
fn destination(transaction: &TransactionView) -> Option<String> {
    if transaction.transaction_type != TransactionType::SendAirtime {
        return None;
    }
    let phone = PhoneNumber::parse(transaction.phone_number.as_deref()?).ok()?;
    Some(phone.calling_code().to_owned())
}

/// Applies `deltas` to the rows they move. A row may not fall below zero, nor keep an amount
/// once it counts nothing: either means the tables disagree with `transactions`, and no later
/// total could be trusted.
pub(crate) fn settle(deltas: Deltas, current: &Current) -> Result<Settled, ProjectionError> {
    let mut settled = Settled::default();
    for (key, delta) in deltas.volumes {
        match apply(current.volumes.get(&key), delta, || format!("{key:?}"))? {
            Some(tally) => settled.volumes.push((key, tally)),
            None => settled.volumes_emptied.push(key),
        }
    }
    for (key, delta) in deltas.destinations {
        match apply(current.destinations.get(&key), delta, || format!("{key:?}"))? {
            Some(tally) => settled.destinations.push((key, tally)),
            None => settled.destinations_emptied.push(key),
        }
    }
    Ok(settled)
}

/// The row after `delta`, or `None` when it counts nothing any more.
fn apply(
    current: Option<&Tally>,
    delta: Tally,
    describe: impl Fn() -> String,
) -> Result<Option<Tally>, ProjectionError> {
    let mut tally = current.copied().unwrap_or_default();
    tally.add(delta);
    let consistent = tally.count > 0 || (tally.count == 0 && tally.amount.is_zero());
    if !consistent {
        return Err(ProjectionError::AnalysisMismatch {
            row: describe(),
            count: tally.count,
            amount: tally.amount,
        });
    }
    Ok((tally.count > 0).then_some(tally))
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};
    use tally_domain::{AccountId, TransactionStatus};

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).unwrap()
    }

    fn airtime(status: TransactionStatus, created_at: DateTime<Utc>) -> TransactionView {
        TransactionView {
            transaction_id: TransactionId(uuid::Uuid::from_u128(1)),
            account_id: AccountId(uuid::Uuid::from_u128(2)),
            transaction_type: TransactionType::SendAirtime,
            status,
            amount: Decimal::new(1250, 2),
            currency: Currency::KES,
            phone_number: Some("+254712345678".to_owned()),
            failure_reason: None,
            provider_reference: None,
            created_at,
            updated_at: created_at,
        }
    }

    fn volume(day: NaiveDate, status: TransactionStatus) -> VolumeKey {
        VolumeKey {
            day,
            transaction_type: "SEND_AIRTIME",
            currency: Currency::KES,
            status: status.as_str(),
        }
    }

    fn tally(count: i64, cents: i64) -> Tally {
        Tally {
            count,
            amount: Decimal::new(cents, 2),
        }
    }

    #[test]
    fn a_new_transaction_adds_one_to_its_day_type_currency_and_status() {
        let created = airtime(TransactionStatus::Accepted, at(1_700_000_000));

        let deltas = deltas(&HashMap::new(), std::slice::from_ref(&created));

        let day = NaiveDate::from_ymd_opt(2023, 11, 14).unwrap();
        let accepted = volume(day, TransactionStatus::Accepted);
        assert_eq!(
            deltas.volumes.into_iter().collect::<Vec<_>>(),
            [(accepted, tally(1, 1250))]
        );
        let destination = deltas.destinations.keys().next().unwrap();
        assert_eq!(destination.calling_code, "254");
    }

    #[test]
    fn a_status_that_moves_takes_the_transaction_out_of_its_old_row_into_the_new_one() {
        let before = airtime(TransactionStatus::Processing, at(1_700_000_000));
        let after = TransactionView {
            status: TransactionStatus::Failed,
            ..before.clone()
        };
        let loaded = HashMap::from([(before.transaction_id, before)]);

        let deltas = deltas(&loaded, &[after]);

        let day = NaiveDate::from_ymd_opt(2023, 11, 14).unwrap();
        let moves: Vec<_> = deltas.volumes.into_iter().collect();
        assert_eq!(
            moves,
            [
                (volume(day, TransactionStatus::Failed), tally(1, 1250)),
                (volume(day, TransactionStatus::Processing), tally(-1, -1250)),
            ]
        );
        assert_eq!(deltas.destinations.len(), 2);
    }

    #[test]
    fn a_creation_time_moved_to_the_day_before_moves_the_transaction_to_that_day() {
        let before = airtime(TransactionStatus::Successful, at(1_700_006_400));
        let after = TransactionView {
            created_at: at(1_699_999_999),
            ..before.clone()
        };
        let loaded = HashMap::from([(before.transaction_id, before)]);

        let deltas = deltas(&loaded, &[after]);

        let days: Vec<String> = (deltas.days().iter())
            .map(|day| day.format(DAY_FORMAT).to_string())
            .collect();
        assert_eq!(days, ["2023-11-14", "2023-11-15"]);
    }

    #[test]
    fn a_transaction_that_changed_nothing_counted_moves_no_row() {
        let before = airtime(TransactionStatus::Successful, at(1_700_000_000));
        let after = TransactionView {
            provider_reference: Some("ref".to_owned()),
            ..before.clone()
        };
        let loaded = HashMap::from([(before.transaction_id, before)]);

        assert!(deltas(&loaded, &[after]).is_empty());
    }

    #[test]
    fn a_row_that_falls_to_zero_is_emptied_and_one_that_falls_below_zero_fails_the_batch() {
        let day = NaiveDate::from_ymd_opt(2023, 11, 14).unwrap();
        let processing = volume(day, TransactionStatus::Processing);
        let mut moves = Deltas::default();
        moves.volumes.insert(processing, tally(-1, -1250));
        let mut current = Current::default();
        current.volumes.insert(processing, tally(1, 1250));

        let settled = settle(moves.clone(), &current).unwrap();
        assert_eq!(settled.volumes_emptied, [processing]);
        assert!(settled.volumes.is_empty());

        let missing = settle(moves, &Current::default());
        assert!(matches!(
            missing,
            Err(ProjectionError::AnalysisMismatch { count: -1, .. })
        ));
    }

    #[test]
    fn moves_add_to_the_row_already_there() {
        let day = NaiveDate::from_ymd_opt(2023, 11, 14).unwrap();
        let failed = volume(day, TransactionStatus::Failed);
        let mut moves = Deltas::default();
        moves.volumes.insert(failed, tally(2, 300));
        let mut current = Current::default();
        current.volumes.insert(failed, tally(5, 1001));

        let settled = settle(moves, &current).unwrap();

        assert_eq!(settled.volumes, [(failed, tally(7, 1301))]);
    }
}

#[cfg(test)]
mod upgrade_tests {
    use sqlx::Pool;
    use tally_domain::TransactionStatus;

    use super::*;
    use crate::backend::Backend;
    use crate::queries::{self, TransactionFilter};
    use crate::test_support::{TestBackend, TestStore};
    use crate::{ReadStore, backend_tests, with_pool};

    /// The last migration before the analysis tables.
    const VERSION_BEFORE_ANALYSIS: i64 = 4;

    /// Transactions an older release projected: amounts at every scale, a day boundary, and
    /// airtime to two destinations.
    const OLDER_TRANSACTIONS: &str = "INSERT INTO transactions (transaction_id, account_id, \
        transaction_type, status, amount, currency, phone_number, failure_reason, \
        provider_reference, created_at_ms, updated_at_ms) VALUES \
        ('00000000-0000-0000-0000-000000000001', 'a', 'ADD_MONEY', 'SUCCESSFUL', '100.00', \
         'USD', NULL, NULL, NULL, 1700000000000, 1700000000000), \
        ('00000000-0000-0000-0000-000000000002', 'a', 'ADD_MONEY', 'SUCCESSFUL', '0.05', \
         'USD', NULL, NULL, NULL, 1700006399999, 1700006399999), \
        ('00000000-0000-0000-0000-000000000003', 'a', 'SEND_AIRTIME', 'FAILED', '12.50', \
         'USD', '+254712345678', 'airtime_provider_rejected', NULL, 1700006400000, \
         1700006400000), \
        ('00000000-0000-0000-0000-000000000004', 'a', 'SEND_AIRTIME', 'PROCESSING', '1.25', \
         'USD', '+14155552671', NULL, NULL, 1700006400001, 1700006400001), \
        ('00000000-0000-0000-0000-000000000005', 'b', 'ADD_MONEY', 'SUCCESSFUL', '1200', \
         'JPY', NULL, NULL, NULL, 1700000000000, 1700000000000), \
        ('00000000-0000-0000-0000-000000000006', 'b', 'ADD_MONEY', 'SUCCESSFUL', '5', \
         'JPY', NULL, NULL, NULL, 1700000000001, 1700000000001), \
        ('00000000-0000-0000-0000-000000000007', 'c', 'ADMIN_CREDIT', 'SUCCESSFUL', \
         '12.345', 'KWD', NULL, NULL, NULL, 1700000000000, 1700000000000), \
        ('00000000-0000-0000-0000-000000000008', 'c', 'ADMIN_CREDIT', 'SUCCESSFUL', \
         '0.005', 'KWD', NULL, NULL, NULL, 1700000000000, 1700000000000)";

    backend_tests!(a_store_upgraded_with_transactions_gets_the_rows_the_projector_would_write);

    async fn a_store_upgraded_with_transactions_gets_the_rows_the_projector_would_write(
        backend: TestBackend,
    ) {
        let older = OLDER_TRANSACTIONS.replace("'a'", "'00000000-0000-0000-0000-00000000000a'");
        let older = older.replace("'b'", "'00000000-0000-0000-0000-00000000000b'");
        let older = older.replace("'c'", "'00000000-0000-0000-0000-00000000000c'");
        let test = TestStore::open_upgraded(backend, VERSION_BEFORE_ANALYSIS, &[&older]).await;
        let store = test.store();

        let transactions = store
            .transactions_page(&TransactionFilter::default(), None, 100)
            .await
            .unwrap();
        assert_eq!(transactions.len(), 8);
        let expected = settle(deltas(&HashMap::new(), &transactions), &Current::default());
        let expected = expected.unwrap();
        let days = deltas(&HashMap::new(), &transactions).days();
        let backfilled = current_rows(store, &days).await;

        let mut volumes: Vec<(VolumeKey, Tally)> = backfilled.volumes.into_iter().collect();
        volumes.sort_by_key(|(key, _)| *key);
        assert_eq!(volumes, expected.volumes);
        let mut destinations: Vec<_> = backfilled.destinations.into_iter().collect();
        destinations.sort_by_key(|(key, _)| key.clone());
        assert_eq!(destinations, expected.destinations);

        let kwd = volumes
            .iter()
            .find(|(key, _)| key.currency == Currency::KWD);
        assert_eq!(
            kwd.map(|(_, tally)| tally.amount.to_string()).as_deref(),
            Some("12.350")
        );
        let usd_days: Vec<(String, &str, i64)> = (volumes.iter())
            .filter(|(key, _)| key.currency == Currency::USD)
            .map(|(key, tally)| (key.day.to_string(), key.status, tally.count))
            .collect();
        let failed = TransactionStatus::Failed.as_str();
        let successful = TransactionStatus::Successful.as_str();
        let processing = TransactionStatus::Processing.as_str();
        assert_eq!(
            usd_days,
            [
                ("2023-11-14".to_owned(), successful, 2),
                ("2023-11-15".to_owned(), failed, 1),
                ("2023-11-15".to_owned(), processing, 1),
            ]
        );
        let codes: Vec<&str> = (destinations.iter())
            .map(|(key, _)| key.calling_code.as_str())
            .collect();
        assert_eq!(codes, ["1", "254"]);
    }

    async fn current_rows(store: &ReadStore, days: &[NaiveDate]) -> Current {
        with_pool!(store, pool => rows_on(pool, days).await)
    }

    async fn rows_on<DB: Backend>(pool: &Pool<DB>, days: &[NaiveDate]) -> Current {
        let mut conn = pool.acquire().await.unwrap();
        queries::analysis_rows_for_update::<DB>(&mut conn, days)
            .await
            .unwrap()
    }
}
