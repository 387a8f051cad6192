//! The `[keys]` section's checks: which backend, and for `pkcs11` the token to use.

use super::{ConfigError, KeyBackend, KeysConfig};
use std::path::PathBuf;

/// What the relay needs to reach a PKCS#11 token; only made from a validated config.
/// The PIN itself is not here: it is read from `pin_file` at each login, so it is never
/// in a `Debug` form or a snapshot of the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pkcs11Settings {
    pub module: PathBuf,
    pub token_label: String,
    pub pin_file: PathBuf,
}

impl KeysConfig {
    /// The token settings when `backend = "pkcs11"`.
    pub fn pkcs11(&self) -> Option<Pkcs11Settings> {
        match (
            self.backend,
            &self.module,
            &self.token_label,
            &self.pin_file,
        ) {
            (KeyBackend::Pkcs11, Some(module), Some(label), Some(pin_file)) => {
                Some(Pkcs11Settings {
                    module: module.clone(),
                    token_label: label.clone(),
                    pin_file: pin_file.clone(),
                })
            }
            _ => None,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let set = [
            ("keys.module", self.module.is_some()),
            ("keys.token_label", self.token_label.is_some()),
            ("keys.pin_file", self.pin_file.is_some()),
        ];
        match self.backend {
            KeyBackend::File => {
                if let Some((field, _)) = set.iter().find(|(_, is_set)| *is_set) {
                    return Err(ConfigError::new(
                        *field,
                        "is only read with backend = \"pkcs11\": set keys.backend = \"pkcs11\" or remove it",
                    ));
                }
            }
            KeyBackend::Pkcs11 => {
                if let Some((field, _)) = set.iter().find(|(_, is_set)| !*is_set) {
                    let example = match *field {
                        "keys.module" => "module = \"/usr/lib/softhsm/libsofthsm2.so\"",
                        "keys.token_label" => "token_label = \"dkim\"",
                        _ => "pin_file = \"/etc/dkim-relay/token.pin\"",
                    };
                    return Err(ConfigError::new(
                        *field,
                        format!("is required with backend = \"pkcs11\" (for example {example})"),
                    ));
                }
                if self
                    .module
                    .as_ref()
                    .is_some_and(|m| m.as_os_str().is_empty())
                {
                    return Err(ConfigError::new(
                        "keys.module",
                        "is empty: name the PKCS#11 library (.so)",
                    ));
                }
                let label = self.token_label.as_deref().unwrap_or_default();
                // CK_TOKEN_INFO's label is 32 bytes, blank-padded.
                if label.trim().is_empty()
                    || label.len() > 32
                    || label.chars().any(char::is_control)
                {
                    return Err(ConfigError::new(
                        "keys.token_label",
                        "must be 1 to 32 bytes without control characters (the token's label as softhsm2-util --show-slots or pkcs11-tool -L print it)",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(text: &str) -> String {
        let e = Config::parse(text)
            .and_then(|mut c| c.validate().map(|_| c))
            .err()
            .unwrap();
        format!("{}: {}", e.field, e.problem)
    }

    #[test]
    fn pkcs11_needs_module_label_and_pin_file() {
        let e = err("[keys]\nbackend = \"pkcs11\"\ntoken_label = \"dkim\"\npin_file = \"/p\"\n");
        assert!(e.starts_with("keys.module: is required"), "{e}");
        let e = err("[keys]\nbackend = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"dkim\"\n");
        assert!(e.starts_with("keys.pin_file: is required"), "{e}");
        let e = err("[keys]\nbackend = \"pkcs11\"\nmodule = \"/m.so\"\npin_file = \"/p\"\ntoken_label = \"\"\n");
        assert!(e.starts_with("keys.token_label:"), "{e}");
        let e = err("[keys]\ntoken_label = \"dkim\"\n");
        assert!(e.starts_with("keys.token_label: is only read"), "{e}");
        let e = err("[keys]\nbackend = \"hsm\"\n");
        assert!(e.contains("expected `file` or `pkcs11`"), "{e}");
    }

    #[test]
    fn a_complete_pkcs11_section_gives_its_settings() {
        let mut c = Config::parse(
            "[keys]\nbackend = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"dkim\"\npin_file = \"/p\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let s = c.keys.pkcs11().unwrap();
        assert_eq!(s.token_label, "dkim");
        assert!(Config::default().keys.pkcs11().is_none());
    }
}
