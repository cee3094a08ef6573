//! [`Money`]: how an exact amount is stored, the same Rust type on every backend.
//!
//! SQLite keeps it as TEXT in a STRICT table ("69.50": a REAL can never slip in); MySQL as
//! `DECIMAL(28,4)`. Neither path goes through a float, and neither rounds: an amount with more
//! decimals than its column or its currency holds is refused, on the way in and on the way out.

use rust_decimal::Decimal;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::mysql::{MySqlTypeInfo, MySqlValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, MySql, Sqlite, Type};
use tally_domain::Currency;

/// Decimals of MySQL's money columns, `DECIMAL(28,4)`: more than any currency's scale.
pub const MONEY_COLUMN_SCALE: u32 = 4;

/// Significant digits of MySQL's money columns: all that `rust_decimal` holds exactly.
pub const MONEY_COLUMN_DIGITS: u32 = 28;

/// An amount as a column of the read store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Money(Decimal);

impl Money {
    /// `value` written at `currency`'s scale ("69.50", not "69.5"), so that SQLite's text reads
    /// like the amount it is. A value with more decimals than the currency allows is kept as it
    /// is, never rounded; the domain builds no such value.
    pub fn at_scale(value: Decimal, currency: Currency) -> Money {
        let mut scaled = value;
        if scaled.scale() < currency.minor_units() {
            scaled.rescale(currency.minor_units());
        }
        Money(scaled)
    }

    /// The stored amount at `currency`'s scale, or `None` when it has more decimals than the
    /// currency allows (MySQL's trailing zeros beyond the scale are dropped, which is exact).
    pub fn in_currency(self, currency: Currency) -> Option<Decimal> {
        let normalized = self.0.normalize();
        if normalized.scale() > currency.minor_units() {
            return None;
        }
        Some(Money::at_scale(normalized, currency).0)
    }

    /// The amount exactly as stored.
    pub fn value(self) -> Decimal {
        self.0
    }
}

/// Refuses what `DECIMAL(28,4)` would round or reject: MySQL rounds extra decimals with only
/// a note, even in strict mode.
fn check_fits_column(value: Decimal) -> Result<(), BoxDynError> {
    let integer_digits_max = MONEY_COLUMN_DIGITS - MONEY_COLUMN_SCALE;
    let limit = Decimal::from_i128_with_scale(10_i128.pow(integer_digits_max), 0);
    if value.scale() > MONEY_COLUMN_SCALE || value.abs() >= limit {
        return Err(format!("amount {value} does not fit DECIMAL(28,4)").into());
    }
    Ok(())
}

fn parse_exact(text: &str) -> Result<Money, BoxDynError> {
    let value = Decimal::from_str_exact(text)
        .map_err(|_| format!("stored amount {text:?} is not an exact decimal"))?;
    Ok(Money(value))
}

impl Type<Sqlite> for Money {
    fn type_info() -> SqliteTypeInfo {
        <str as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for Money {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.0.to_string(), buf)
    }
}

impl Decode<'_, Sqlite> for Money {
    fn decode(value: SqliteValueRef<'_>) -> Result<Money, BoxDynError> {
        parse_exact(<&str as Decode<Sqlite>>::decode(value)?)
    }
}

impl Type<MySql> for Money {
    fn type_info() -> MySqlTypeInfo {
        <Decimal as Type<MySql>>::type_info()
    }

    fn compatible(ty: &MySqlTypeInfo) -> bool {
        <Decimal as Type<MySql>>::compatible(ty)
    }
}

impl Encode<'_, MySql> for Money {
    fn encode_by_ref(&self, buf: &mut Vec<u8>) -> Result<IsNull, BoxDynError> {
        check_fits_column(self.0)?;
        <Decimal as Encode<MySql>>::encode_by_ref(&self.0, buf)
    }
}

impl Decode<'_, MySql> for Money {
    fn decode(value: MySqlValueRef<'_>) -> Result<Money, BoxDynError> {
        parse_exact(<&str as Decode<MySql>>::decode(value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decimal(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    #[test]
    fn an_amount_is_written_at_its_currency_scale_without_rounding() {
        let usd = |text| {
            Money::at_scale(decimal(text), Currency::USD)
                .value()
                .to_string()
        };
        assert_eq!(usd("69.5"), "69.50");
        assert_eq!(usd("7"), "7.00");
        assert_eq!(usd("0.125"), "0.125");
    }

    #[test]
    fn a_stored_amount_reads_back_at_its_currency_scale_and_extra_decimals_are_refused() {
        let read = |text| Money(decimal(text)).in_currency(Currency::USD);
        assert_eq!(
            read("69.5000").map(|v| v.to_string()),
            Some("69.50".to_owned())
        );
        assert_eq!(
            read("69.50").map(|v| v.to_string()),
            Some("69.50".to_owned())
        );
        assert_eq!(read("0.0050"), None);
    }

    #[test]
    fn what_decimal_28_4_would_round_or_refuse_is_refused_before_it_is_sent() {
        assert!(check_fits_column(decimal("1000000000000000000000000")).is_err());
        assert!(check_fits_column(decimal("999999999999999999999999.9999")).is_ok());
        assert!(check_fits_column(decimal("1.00001")).is_err());
        assert!(check_fits_column(decimal("-1.0001")).is_ok());
    }
}
