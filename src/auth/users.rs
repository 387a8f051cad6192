//! The AUTH users file: TOML, one `[[users]]` table per user with an argon2 PHC hash
//! (never a password) and the From domains the user may send as.
//!
//! ```toml
//! [[users]]
//! name = "billing-app"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! from_domains = ["billing.example.com"]
//! ```

use super::DomainGrant;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    #[error("users[{index}] ({name}): {problem}")]
    Entry {
        index: usize,
        name: String,
        problem: String,
    },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password_hash: String,
    from_domains: Vec<String>,
}

/// One user. Debug output leaves the hash out.
struct User {
    /// PHC string, checked to parse when the file is loaded.
    hash: String,
    domains: DomainGrant,
}

/// Every user that may AUTH, by name.
#[derive(Default)]
pub struct Users {
    by_name: HashMap<String, User>,
    /// A valid hash to verify against when the user is unknown, so an unknown name takes
    /// as long as a wrong password and names cannot be probed by timing.
    decoy: String,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UserError> {
        let file_err = |problem: String| UserError::File {
            path: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        Self::parse(&text).map_err(|e| match e {
            UserError::File { problem, .. } => file_err(problem),
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Users, UserError> {
        let file: UsersFile = toml::from_str(text).map_err(|e| UserError::File {
            path: String::new(),
            problem: e.message().to_string(),
        })?;
        let mut by_name = HashMap::new();
        for (index, entry) in file.users.into_iter().enumerate() {
            let err = |problem: &str| UserError::Entry {
                index,
                name: entry.name.clone(),
                problem: problem.to_string(),
            };
            if entry.name.is_empty() || entry.name.chars().any(|c| c.is_control()) {
                return Err(err("the name must be non-empty without control characters"));
            }
            if !is_argon2_hash(&entry.password_hash) {
                return Err(err(
                    "password_hash is not an argon2 PHC string; make one with `dkim-relay auth hash-password`",
                ));
            }
            let mut domains = entry.from_domains.clone();
            crate::config::normalise_domains("from_domains", &mut domains)
                .map_err(|e| err(&e.to_string()))?;
            if by_name.contains_key(&entry.name) {
                return Err(err("listed twice"));
            }
            by_name.insert(
                entry.name.clone(),
                User {
                    hash: entry.password_hash,
                    domains: DomainGrant::from_list(domains),
                },
            );
        }
        let decoy = hash_password(b"decoy password for unknown users")?;
        Ok(Users { by_name, decoy })
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Checks a user name and password; returns the user's domains when they match.
    /// Slow on purpose (argon2): call it from a blocking thread.
    pub fn verify(&self, name: &str, password: &[u8]) -> Option<DomainGrant> {
        let (hash, user) = match self.by_name.get(name) {
            Some(user) => (user.hash.as_str(), Some(user)),
            None => (self.decoy.as_str(), None),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let ok = Argon2::default().verify_password(password, &parsed).is_ok();
        match (ok, user) {
            (true, Some(user)) => Some(user.domains.clone()),
            _ => None,
        }
    }
}

/// Whether `hash` is an argon2 PHC string that can verify a password: any other
/// algorithm, bad parameters or a missing hash would make the user unable to log in for
/// ever, so the file is refused instead of failing every AUTH.
fn is_argon2_hash(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Algorithm::try_from(parsed.algorithm).is_ok()
            && argon2::Params::try_from(&parsed).is_ok()
            && parsed.salt.is_some()
            && parsed.hash.is_some()
    })
}

/// Hashes a password with argon2id and a random salt, as a PHC string for the users file.
pub fn hash_password(password: &[u8]) -> Result<String, UserError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| UserError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_with(name: &str, password: &str, domains: &str) -> Users {
        let hash = hash_password(password.as_bytes()).unwrap();
        Users::parse(&format!(
            "[[users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\nfrom_domains = [{domains}]\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_right_password_gives_the_users_domains_and_nothing_else_does() {
        let users = users_with("app", "correct horse", "\"A.example\"");
        let grant = users.verify("app", b"correct horse").unwrap();
        assert!(grant.permits("a.example"));
        assert!(!grant.permits("b.example"));
        assert!(users.verify("app", b"wrong").is_none());
        assert!(users.verify("nobody", b"correct horse").is_none());
    }

    #[test]
    fn plain_text_passwords_are_refused_in_the_file() {
        let err = Users::parse(
            "[[users]]\nname = \"app\"\npassword_hash = \"hunter2\"\nfrom_domains = []\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("PHC"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_holds_no_hash() {
        let users = users_with("app", "pw", "\"a.example\"");
        let debug = format!("{users:?}");
        assert!(
            debug.contains("app") && !debug.contains("argon2"),
            "{debug}"
        );
    }
}
