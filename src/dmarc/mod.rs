//! DMARC aggregate reports (RFC 7489 appendix C, and the DMARCbis aggregate format): read
//! from what receivers send ([`unpack`]: `.xml`, `.xml.gz`, `.zip`, a report mail, a
//! Maildir, an mbox, standard input), parsed without expanding entities ([`parse`]) into
//! [`feedback::Feedback`], stored once per reporter and report id ([`store`]), and summed
//! per domain, source and selector ([`summary`]) for `dmarc report`, `doctor` and
//! `/metrics`. Every bound is in [`limits`]: a hostile file is refused with a
//! [`ImportError`] that names it, never read into memory without bound.

pub mod feedback;
pub mod limits;
pub mod parse;
pub mod ratios;
pub mod reverse;
pub mod store;
pub mod summary;
pub mod unpack;

pub use feedback::{Feedback, Record};
pub use limits::Limits;
pub use store::{Store, Stored};

/// Why one input (or one report inside it) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{what} is larger than {limit} bytes (the limit for {why}); refused")]
    TooLarge {
        what: &'static str,
        limit: u64,
        why: &'static str,
    },
    #[error("the XML has a DOCTYPE: DMARC reports have none, and a DTD can define entity bombs; refused without reading it")]
    DocType,
    #[error("the XML uses the entity &{0}; DMARC reports use only the five predefined ones, and no DTD is read; refused")]
    Entity(String),
    #[error("the XML nests deeper than {0} elements (DMARC reports nest 4 deep); refused")]
    TooDeep(usize),
    #[error("the report has more than {0} records; refused")]
    TooManyRecords(usize),
    #[error("the text of <{element}> is longer than {limit} bytes; refused")]
    TextTooLong { element: String, limit: usize },
    #[error("malformed XML at byte {position}: {problem}")]
    Xml { position: u64, problem: String },
    #[error("not a DMARC aggregate report: {0}")]
    NotAReport(String),
    #[error("malformed gzip data: {0}")]
    Gzip(String),
    #[error("unreadable zip archive: {0}")]
    Zip(String),
    #[error("the mail carries no DMARC report (no .xml, .xml.gz or .zip attachment)")]
    NoReportInMessage,
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
