//! Why a recipient failed or a message waits, in the form the delivery state keeps on disk
//! and a DSN (RFC 3464) reports: decided once by delivery's typed verdict, so a bounce sent
//! after a restart says exactly what the attempt found, without reading text back.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct Problem {
    /// RFC 3463 status for the DSN's `Status:` field, e.g. "5.1.1"; `None` when nothing
    /// more specific than the DSN kind's generic status is known.
    pub status: Option<String>,
    /// The upstream's reply ("550 5.1.1 no such user") or the relay's own reason.
    pub text: String,
    /// `text` is the upstream's SMTP reply (`Diagnostic-Code: smtp;`), not ours.
    pub smtp: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// State files written before problems were typed hold a plain string; it is kept as the
/// text, with no status (the DSN then gives the generic one).
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Typed {
        status: Option<String>,
        text: String,
        smtp: bool,
    },
    Text(String),
}

impl From<Stored> for Problem {
    fn from(stored: Stored) -> Problem {
        match stored {
            Stored::Typed { status, text, smtp } => Problem { status, text, smtp },
            Stored::Text(text) => Problem {
                status: None,
                text,
                smtp: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_round_trips_and_an_old_string_still_reads() {
        let p = Problem {
            status: Some("5.1.1".into()),
            text: "550 5.1.1 no such user".into(),
            smtp: true,
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Problem>(&json).unwrap(), p);
        let old: Problem = serde_json::from_str("\"connection error: refused\"").unwrap();
        assert_eq!(old.status, None);
        assert_eq!(old.text, "connection error: refused");
        assert!(!old.smtp);
    }
}
