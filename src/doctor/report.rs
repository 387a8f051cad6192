//! What `doctor` found: findings per domain, and the two ways to print them (text for
//! people, JSON for machines).

use serde::Serialize;

/// How bad a finding is. Errors make `doctor` exit 1; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warn,
    Error,
}

impl Severity {
    fn marker(self) -> &'static str {
        match self {
            Severity::Ok => "OK",
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
            Severity::Error => "ERROR",
        }
    }
}

/// Which record a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Spf,
    Dkim,
    Dmarc,
}

impl Check {
    fn label(self) -> &'static str {
        match self {
            Check::Spf => "SPF",
            Check::Dkim => "DKIM",
            Check::Dmarc => "DMARC",
        }
    }
}

/// One finding: a plain sentence, and where it helps, the exact record to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: Check,
    pub severity: Severity,
    /// What it is about when a check has several parts, e.g. "s1 (rsa, active)".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub message: String,
    /// A zone-file line to publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
}

impl Finding {
    pub fn new(check: Check, severity: Severity, message: impl Into<String>) -> Finding {
        Finding {
            check,
            severity,
            subject: None,
            message: message.into(),
            publish: None,
        }
    }

    pub fn about(mut self, subject: impl Into<String>) -> Finding {
        self.subject = Some(subject.into());
        self
    }

    pub fn publish(mut self, line: impl Into<String>) -> Finding {
        self.publish = Some(line.into());
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainReport {
    pub domain: String,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub domains: Vec<DomainReport>,
    pub errors: usize,
    pub warnings: usize,
}

impl Report {
    pub fn push(&mut self, domain: DomainReport) {
        for f in &domain.findings {
            match f.severity {
                Severity::Error => self.errors += 1,
                Severity::Warn => self.warnings += 1,
                Severity::Ok | Severity::Info => {}
            }
        }
        self.domains.push(domain);
    }

    /// Grouped per domain, one line per finding, the record to publish indented below.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for d in &self.domains {
            out.push_str(&format!("{}\n", d.domain));
            for f in &d.findings {
                let subject = f
                    .subject
                    .as_ref()
                    .map(|s| format!("{s}: "))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  {:<5} {:<5} {subject}{}\n",
                    f.severity.marker(),
                    f.check.label(),
                    f.message
                ));
                if let Some(line) = &f.publish {
                    out.push_str(&format!("              {line}\n"));
                }
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "{} error(s), {} warning(s) in {} domain(s)\n",
            self.errors,
            self.warnings,
            self.domains.len()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_groups_by_domain_and_counts_errors_and_warnings() {
        let mut report = Report::default();
        report.push(DomainReport {
            domain: "example.net".into(),
            findings: vec![
                Finding::new(Check::Spf, Severity::Ok, "fine"),
                Finding::new(Check::Dmarc, Severity::Warn, "p=none"),
                Finding::new(Check::Dkim, Severity::Error, "missing")
                    .about("s1 (rsa, active)")
                    .publish("s1._domainkey.example.net. 3600 IN TXT ( \"v=DKIM1\" )"),
            ],
        });
        assert_eq!((report.errors, report.warnings), (1, 1));
        let text = report.text();
        assert!(
            text.starts_with("example.net\n  OK    SPF   fine\n"),
            "{text}"
        );
        assert!(text.contains("ERROR DKIM  s1 (rsa, active): missing\n              s1._domainkey"));
        assert!(text.ends_with("1 error(s), 1 warning(s) in 1 domain(s)\n"));
    }
}
