//! RFC 5322 §3.3 date-time in UTC, for Received trace fields and generated messages.
//! mail-parser, which reads the Date headers, also writes them: one calendar in the relay.

/// Formats Unix seconds as e.g. `Wed, 25 Nov 2026 17:12:54 +0000`.
pub fn rfc5322_date(unix: u64) -> String {
    mail_parser::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(i64::MAX)).to_rfc822()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_format_correctly() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_528_637_909),
            "Sun, 10 Jun 2018 13:38:29 +0000"
        );
        assert_eq!(
            rfc5322_date(1_709_210_096),
            "Thu, 29 Feb 2024 12:34:56 +0000"
        );
    }
}
