//! Exact money: ISO 4217 currencies with their fixed minor-unit scale, and amounts that can
//! only be built by a checked parse.
//!
//! Nothing here rounds. An amount with more decimals than its currency allows is rejected, not
//! adjusted, so what a caller sent is exactly what the ledger records.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The largest amount one transaction may move, in major units of any currency. A trillion
/// is far beyond any wallet top-up and keeps every sum of amounts well inside the 28
/// significant digits of `rust_decimal` and the read store's `DECIMAL(28,4)` columns.
pub const AMOUNT_MAJOR_UNITS_MAX: i64 = 1_000_000_000_000;

/// The largest balance an account may hold, in major units. A thousand times the largest
/// amount: room for many maximal credits, still 9 digits short of the column's integer part.
pub const BALANCE_MAJOR_UNITS_MAX: i64 = 1_000_000_000_000_000;

/// The longest amount text accepted before parsing, in bytes. Longer text cannot be a valid
/// amount under the maxima above and is refused before any arithmetic.
const AMOUNT_TEXT_BYTES_MAX: usize = 40;

/// Why an amount or currency was refused. The codes are stable and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount is not a plain decimal number")]
    AmountNotADecimal,
    #[error("amount must be greater than zero")]
    AmountNotPositive,
    #[error("amount has more decimals than its currency allows")]
    AmountHasTooManyDecimals,
    #[error("amount is above the maximum of one transaction")]
    AmountAboveMaximum,
    #[error("currency is not a supported ISO 4217 code")]
    UnknownCurrency,
}

impl MoneyError {
    /// The stable, machine-readable code of this rejection.
    pub fn code(self) -> &'static str {
        match self {
            MoneyError::AmountNotADecimal => "amount_not_a_decimal",
            MoneyError::AmountNotPositive => "amount_not_positive",
            MoneyError::AmountHasTooManyDecimals => "amount_has_too_many_decimals",
            MoneyError::AmountAboveMaximum => "amount_above_maximum",
            MoneyError::UnknownCurrency => "unknown_currency",
        }
    }
}

macro_rules! currencies {
    ($($code:ident = $minor_units:literal),+ $(,)?) => {
        /// A supported ISO 4217 currency.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Currency { $($code),+ }

        impl Currency {
            /// Every supported currency.
            pub const ALL: &'static [Currency] = &[$(Currency::$code),+];

            /// The three-letter ISO 4217 code.
            pub fn code(self) -> &'static str {
                match self { $(Currency::$code => stringify!($code)),+ }
            }

            /// How many decimals an amount in this currency may have (ISO 4217 minor units).
            pub fn minor_units(self) -> u32 {
                match self { $(Currency::$code => $minor_units),+ }
            }
        }

        impl FromStr for Currency {
            type Err = MoneyError;

            fn from_str(code: &str) -> Result<Currency, MoneyError> {
                match code {
                    $(stringify!($code) => Ok(Currency::$code),)+
                    _ => Err(MoneyError::UnknownCurrency),
                }
            }
        }
    };
}

currencies! {
    AED = 2, ARS = 2, AUD = 2, BDT = 2, BHD = 3, BRL = 2, CAD = 2, CHF = 2, CLP = 0, CNY = 2,
    COP = 2, CZK = 2, DKK = 2, EGP = 2, EUR = 2, GBP = 2, GHS = 2, HKD = 2, HUF = 2, IDR = 2,
    ILS = 2, INR = 2, IQD = 3, ISK = 0, JOD = 3, JPY = 0, KES = 2, KRW = 0, KWD = 3, LKR = 2,
    LYD = 3, MAD = 2, MXN = 2, MYR = 2, NGN = 2, NOK = 2, NZD = 2, OMR = 3, PHP = 2, PKR = 2,
    PLN = 2, QAR = 2, RWF = 0, SAR = 2, SEK = 2, SGD = 2, THB = 2, TND = 3, TRY = 2, TZS = 2,
    UGX = 0, USD = 2, VND = 0, XAF = 0, XOF = 0, ZAR = 2,
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Currency, D::Error> {
        let code = String::deserialize(deserializer)?;
        code.parse()
            .map_err(|_| serde::de::Error::custom("unknown currency"))
    }
}

/// A strictly positive amount of money at most [`AMOUNT_MAJOR_UNITS_MAX`], with no more
/// decimals than its currency allows. Built only by [`Amount::parse`] or [`Amount::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Amount(Decimal);

impl Amount {
    /// Parses text such as `"69.50"` for `currency`. Only plain decimal notation is accepted:
    /// an optional leading `+` is refused too, as are exponents, spaces and thousands separators.
    pub fn parse(text: &str, currency: Currency) -> Result<Amount, MoneyError> {
        let value = parse_plain_decimal(text)?;
        Amount::new(value, currency)
    }

    /// Checks a decimal against the rules of `currency` and holds it at the currency's scale,
    /// so that `100` USD is kept, stored and shown as `100.00`.
    pub fn new(value: Decimal, currency: Currency) -> Result<Amount, MoneyError> {
        Amount::checked(value)?;
        if value.normalize().scale() > currency.minor_units() {
            return Err(MoneyError::AmountHasTooManyDecimals);
        }
        let mut scaled = value;
        scaled.rescale(currency.minor_units());
        Ok(Amount(scaled))
    }

    /// Checks the currency-independent rules: positive and at most the maximum.
    fn checked(value: Decimal) -> Result<Amount, MoneyError> {
        if value <= Decimal::ZERO {
            return Err(MoneyError::AmountNotPositive);
        }
        if value > Decimal::from(AMOUNT_MAJOR_UNITS_MAX) {
            return Err(MoneyError::AmountAboveMaximum);
        }
        Ok(Amount(value))
    }

    pub fn value(self) -> Decimal {
        self.0
    }
}

impl TryFrom<Decimal> for Amount {
    type Error = MoneyError;

    fn try_from(value: Decimal) -> Result<Amount, MoneyError> {
        Amount::checked(value)
    }
}

impl From<Amount> for Decimal {
    fn from(amount: Amount) -> Decimal {
        amount.0
    }
}

/// The most digits the whole part of an amount can have and still be at most the maximum.
const AMOUNT_WHOLE_DIGITS_MAX: usize = 13;

/// Parses `[-]digits[.digits]` exactly. Anything else is not an amount.
fn parse_plain_decimal(text: &str) -> Result<Decimal, MoneyError> {
    if text.len() > AMOUNT_TEXT_BYTES_MAX {
        return Err(MoneyError::AmountNotADecimal);
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let is_digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    if !is_digits(whole) || fraction.is_some_and(|fraction| !is_digits(fraction)) {
        return Err(MoneyError::AmountNotADecimal);
    }
    if text.starts_with('-') {
        return Err(MoneyError::AmountNotPositive);
    }
    if whole.trim_start_matches('0').len() > AMOUNT_WHOLE_DIGITS_MAX {
        return Err(MoneyError::AmountAboveMaximum);
    }
    Decimal::from_str_exact(text).map_err(|_| MoneyError::AmountNotADecimal)
}

/// Formats a decimal at the fixed scale of `currency`, such as `"69.50"` or `"1200"`.
pub fn format_at_scale(value: Decimal, currency: Currency) -> String {
    let mut scaled = value;
    scaled.rescale(currency.minor_units());
    scaled.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(text: &str) -> Result<Amount, MoneyError> {
        Amount::parse(text, Currency::USD)
    }

    #[test]
    fn plain_decimals_within_scale_are_accepted_exactly() {
        assert_eq!(usd("69.50").map(Amount::value), Ok(Decimal::new(695, 1)));
        assert_eq!(usd("1").map(Amount::value), Ok(Decimal::ONE));
        assert_eq!(usd("0.01").map(Amount::value), Ok(Decimal::new(1, 2)));
        assert!(Amount::parse("12.345", Currency::KWD).is_ok());
    }

    #[test]
    fn bad_amounts_are_rejected_with_stable_codes() {
        let cases = [
            ("-1", MoneyError::AmountNotPositive),
            ("0", MoneyError::AmountNotPositive),
            ("0.00", MoneyError::AmountNotPositive),
            ("1.001", MoneyError::AmountHasTooManyDecimals),
            ("1e3", MoneyError::AmountNotADecimal),
            ("1E3", MoneyError::AmountNotADecimal),
            ("abc", MoneyError::AmountNotADecimal),
            ("", MoneyError::AmountNotADecimal),
            (" 1", MoneyError::AmountNotADecimal),
            ("+1", MoneyError::AmountNotADecimal),
            ("1.", MoneyError::AmountNotADecimal),
            (".5", MoneyError::AmountNotADecimal),
            ("1,000", MoneyError::AmountNotADecimal),
            ("1000000000000.01", MoneyError::AmountAboveMaximum),
            (
                "99999999999999999999999999999999",
                MoneyError::AmountAboveMaximum,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(usd(text), Err(expected), "amount {text:?}");
        }
    }

    #[test]
    fn amounts_are_held_at_their_currency_scale() {
        assert_eq!(
            usd("100").map(|amount| amount.value().to_string()),
            Ok("100.00".to_owned())
        );
        let dinars = Amount::parse("1.5", Currency::KWD).map(|amount| amount.value().to_string());
        assert_eq!(dinars, Ok("1.500".to_owned()));
    }

    #[test]
    fn yen_has_no_minor_units() {
        assert_eq!(
            Amount::parse("1.5", Currency::JPY),
            Err(MoneyError::AmountHasTooManyDecimals)
        );
        assert!(Amount::parse("1.0", Currency::JPY).is_ok());
    }

    #[test]
    fn amounts_format_at_their_currency_scale() {
        assert_eq!(
            format_at_scale(Decimal::new(695, 1), Currency::USD),
            "69.50"
        );
        assert_eq!(format_at_scale(Decimal::from(1200), Currency::JPY), "1200");
        assert_eq!(format_at_scale(Decimal::ZERO, Currency::KWD), "0.000");
    }

    #[test]
    fn currency_codes_round_trip() {
        for currency in Currency::ALL {
            assert_eq!(currency.code().parse::<Currency>(), Ok(*currency));
        }
        assert_eq!("usd".parse::<Currency>(), Err(MoneyError::UnknownCurrency));
    }
}
