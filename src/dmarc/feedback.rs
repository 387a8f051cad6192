//! One aggregate report as receivers send it, reduced to what the relay reads: who sent
//! it, for which period and policy, and one [`Record`] per (source, identifiers, result)
//! row. It is also the stored form (JSON), so a field added here must keep `default`.

use serde::{Deserialize, Serialize};

/// Which schema the report followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 7489 appendix C.
    #[default]
    Rfc7489,
    /// The DMARCbis aggregate format (`xmlns="urn:ietf:params:xml:ns:dmarc-2.0"`, `np=`,
    /// `testing=`, `<generator>`).
    Dmarcbis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Feedback {
    #[serde(default)]
    pub format: Format,
    /// `report_metadata/org_name`: the receiver (google.com, Outlook.com, Yahoo).
    pub org_name: String,
    #[serde(default)]
    pub email: String,
    pub report_id: String,
    /// `date_range`, Unix seconds.
    pub begin: u64,
    pub end: u64,
    pub policy: Policy,
    pub records: Vec<Record>,
}

/// `policy_published`: the record the receiver found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Policy {
    pub domain: String,
    #[serde(default)]
    pub adkim: String,
    #[serde(default)]
    pub aspf: String,
    #[serde(default)]
    pub p: String,
    #[serde(default)]
    pub sp: String,
    /// DMARCbis only: the policy for non-existent subdomains.
    #[serde(default)]
    pub np: String,
    /// RFC 7489 only.
    #[serde(default)]
    pub pct: String,
    /// DMARCbis only: `y` while the domain owner tests the policy.
    #[serde(default)]
    pub testing: String,
}

/// What the receiver did with the messages of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Disposition {
    /// Delivered as if there were no DMARC policy (also DMARCbis's `pass`).
    #[default]
    None,
    Quarantine,
    Reject,
}

impl Disposition {
    pub fn parse(s: &str) -> Option<Disposition> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "pass" => Some(Disposition::None),
            "quarantine" => Some(Disposition::Quarantine),
            "reject" => Some(Disposition::Reject),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::None => "none (delivered)",
            Disposition::Quarantine => "quarantine (spam folder)",
            Disposition::Reject => "reject",
        }
    }
}

/// One `<record>`: `count` messages from `source_ip` with the same identifiers and results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Record {
    pub source_ip: String,
    pub count: u64,
    pub disposition: Disposition,
    /// `policy_evaluated/dkim`: a DKIM signature passed and aligned with the From domain.
    pub dkim_aligned: bool,
    /// `policy_evaluated/spf`: SPF passed and aligned with the From domain.
    pub spf_aligned: bool,
    /// `policy_evaluated/reason/type`: why the receiver overrode the policy (forwarded,
    /// mailing_list, local_policy…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    pub header_from: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub envelope_from: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dkim: Vec<DkimResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spf: Vec<SpfResult>,
}

impl Record {
    /// DMARC passes when DKIM or SPF passes aligned (RFC 7489 §4.2).
    pub fn dmarc_pass(&self) -> bool {
        self.dkim_aligned || self.spf_aligned
    }
}

/// One `auth_results/dkim`: a signature the receiver checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DkimResult {
    pub domain: String,
    #[serde(default)]
    pub selector: String,
    /// pass, fail, neutral, none, temperror, permerror, policy.
    pub result: String,
}

/// One `auth_results/spf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SpfResult {
    pub domain: String,
    #[serde(default)]
    pub scope: String,
    pub result: String,
}
