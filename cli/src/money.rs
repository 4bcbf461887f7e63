//! Amounts in major units ("12.50") to the API's minor units and back.
//!
//! The API carries `amount_cents`: the amount in the currency's minor unit
//! (cents for EUR, yen for JPY, fils for KWD). The conversion is exact: a
//! decimal string, never a float, and an amount with more decimals than the
//! currency has is refused rather than rounded.

/// Decimals of the minor unit (ISO 4217), for the currencies that do not
/// have two. Every other code has two.
const EXPONENTS: &[(&str, u32)] = &[
    ("BHD", 3),
    ("BIF", 0),
    ("CLF", 4),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("IQD", 3),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("LYD", 3),
    ("OMR", 3),
    ("PYG", 0),
    ("RWF", 0),
    ("TND", 3),
    ("UGX", 0),
    ("UYI", 0),
    ("UYW", 4),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
];

/// How many decimals `currency`'s minor unit has.
pub fn exponent(currency: &str) -> u32 {
    EXPONENTS
        .iter()
        .find(|(code, _)| *code == currency)
        .map_or(2, |(_, e)| *e)
}

/// Parse `raw` ("12.50", "12.5", "12") as an amount of `currency` in its
/// minor unit. Refuses signs, exponents, separators, more decimals than the
/// currency has, and amounts that do not fit an `i64`.
pub fn parse(raw: &str, currency: &str) -> Result<i64, String> {
    let decimals = exponent(currency);
    let (whole, fraction) = match raw.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (raw, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return Err(format!(
            "{}: not an amount (digits, optionally a point and decimals: 12.50)",
            shown(raw)
        ));
    }
    let fraction = fraction.unwrap_or("");
    if fraction.len() > decimals as usize {
        return Err(match decimals {
            0 => format!("{}: {currency} has no decimals", shown(raw)),
            1 => format!("{}: {currency} has 1 decimal", shown(raw)),
            n => format!("{}: {currency} has {n} decimals", shown(raw)),
        });
    }
    let too_large = || format!("{}: too large", shown(raw));
    let scale = 10i64.pow(decimals);
    let whole: i64 = whole.parse().map_err(|_| too_large())?;
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        let padded = format!("{fraction:0<width$}", width = decimals as usize);
        padded.parse().map_err(|_| too_large())?
    };
    whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(too_large)
}

/// `minor` units of `currency` as "EUR 12.50".
pub fn format(minor: i64, currency: &str) -> String {
    let decimals = exponent(currency);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if decimals == 0 {
        return format!("{currency} {sign}{abs}");
    }
    let scale = 10u64.pow(decimals);
    format!(
        "{currency} {sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = decimals as usize
    )
}

/// A bad input quoted back, cut short.
fn shown(raw: &str) -> String {
    let cut: String = raw.chars().take(40).collect();
    format!("{cut:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_units_become_minor_units_exactly() {
        assert_eq!(parse("12.50", "EUR"), Ok(1250));
        assert_eq!(parse("12.5", "EUR"), Ok(1250));
        assert_eq!(parse("12", "EUR"), Ok(1200));
        assert_eq!(parse("0.01", "USD"), Ok(1));
        assert_eq!(parse("0.10", "USD"), Ok(10));
        assert_eq!(parse("1500", "JPY"), Ok(1500));
        assert_eq!(parse("1.234", "KWD"), Ok(1234));
        assert_eq!(parse("1.5", "KWD"), Ok(1500));
        assert_eq!(parse("0.0001", "CLF"), Ok(1));
        // Far beyond what a float holds exactly.
        assert_eq!(parse("90071992547409.93", "EUR"), Ok(9_007_199_254_740_993));
    }

    #[test]
    fn more_decimals_than_the_currency_has_are_refused() {
        assert_eq!(
            parse("12.505", "EUR").unwrap_err(),
            "\"12.505\": EUR has 2 decimals"
        );
        assert_eq!(
            parse("1.5", "JPY").unwrap_err(),
            "\"1.5\": JPY has no decimals"
        );
        assert!(parse("1.2345", "KWD").is_err());
    }

    #[test]
    fn anything_but_plain_digits_is_refused() {
        for bad in [
            "", ".", "1.", ".5", "-1", "+1", "1e3", "1,50", "12.5.0", " 1", "1 ", "abc", "١٢",
        ] {
            assert!(parse(bad, "EUR").is_err(), "{bad:?}");
        }
        assert_eq!(
            parse("99999999999999999999", "EUR").unwrap_err(),
            "\"99999999999999999999\": too large"
        );
        assert!(parse("92233720368547758.07", "EUR").is_ok());
        assert!(parse("92233720368547758.08", "EUR").is_err());
    }

    #[test]
    fn amounts_print_with_the_currency_and_its_decimals() {
        assert_eq!(format(1250, "EUR"), "EUR 12.50");
        assert_eq!(format(5, "EUR"), "EUR 0.05");
        assert_eq!(format(1500, "JPY"), "JPY 1500");
        assert_eq!(format(1234, "KWD"), "KWD 1.234");
        assert_eq!(format(-1250, "EUR"), "EUR -12.50");
        assert_eq!(format(i64::MIN, "EUR"), "EUR -92233720368547758.08");
    }

    #[test]
    fn parse_and_format_agree() {
        for (raw, currency) in [("12.50", "EUR"), ("1500", "JPY"), ("1.234", "KWD")] {
            let minor = parse(raw, currency).unwrap();
            assert_eq!(format(minor, currency), format!("{currency} {raw}"));
        }
    }
}
