//! How mail for an upstream is signed (DESIGN §5): its own file so that both the
//! upstream (which has one) and the preparation (which signs for one) can name it.

use crate::config::SigningProfileName;

/// How mail for an upstream is signed: header fields left out of h=, RSA only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningProfile {
    pub leave_out: Vec<String>,
    pub rsa_only: bool,
}

impl SigningProfile {
    pub fn standard() -> SigningProfile {
        SigningProfile::from_config(SigningProfileName::Standard, &[])
    }

    pub fn from_config(name: SigningProfileName, extra: &[String]) -> SigningProfile {
        let (base, rsa_only) = name.rules();
        let mut leave_out: Vec<String> = base.iter().map(|h| h.to_string()).collect();
        leave_out.extend(extra.iter().cloned());
        SigningProfile {
            leave_out,
            rsa_only,
        }
    }
}
