//! Error messages that keep their causes.
//!
//! Some errors hide what went wrong in their `source()`: a
//! `tokio_postgres::Error` displays as "db error" and keeps the server's
//! message one level down. Logs and statuses use [`chain`] so the cause is
//! never lost.

use std::error::Error;
use std::fmt::Write as _;

/// `e` and every cause below it, joined by `": "`, without repeating a
/// cause whose text its parent already shows.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("db error")
        }
    }
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("ERROR: invalid byte sequence for encoding \"UTF8\": 0x00")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }
    impl Error for Inner {}

    #[test]
    fn the_cause_below_a_vague_message_is_kept() {
        assert_eq!(
            chain(&Outer(Inner)),
            "db error: ERROR: invalid byte sequence for encoding \"UTF8\": 0x00"
        );
    }
}
