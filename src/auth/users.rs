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
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

    /// Whether `name` is a configured user. Only then may a failed AUTH log the name: a
    /// client that swapped name and password would otherwise put its password in the log.
    pub fn knows(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Checks a user name and password; returns the user's domains when they match.
    /// Slow on purpose (argon2): call it from a blocking thread.
    pub fn verify(&self, name: &str, password: &[u8]) -> Option<DomainGrant> {
        self.verify_with(name, password, &mut Scratch::default())
    }

    /// [`Users::verify`] with argon2's working memory taken from `scratch`, which keeps
    /// it for the next check.
    pub fn verify_with(
        &self,
        name: &str,
        password: &[u8],
        scratch: &mut Scratch,
    ) -> Option<DomainGrant> {
        let (hash, user) = match self.by_name.get(name) {
            Some(user) => (user.hash.as_str(), Some(user)),
            None => (self.decoy.as_str(), None),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let ok = matches(password, &parsed, scratch);
        match (ok, user) {
            (true, Some(user)) => Some(user.domains.clone()),
            _ => None,
        }
    }
}

/// argon2's working memory (`m_cost` KiB: 19 MiB for the default hashes), reused from
/// check to check. Allocated afresh for every check, the freed blocks stayed with the
/// allocator's per-thread arenas: 20 checks left the relay at 358 MB. The pool keeps one
/// per worker, so the memory of the checks is `check_workers` x `m_cost`, once.
#[derive(Default)]
pub struct Scratch(Vec<Block>);

/// What `PasswordVerifier::verify_password` does, with the memory from `scratch`.
fn matches(password: &[u8], hash: &PasswordHash, scratch: &mut Scratch) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(hash.algorithm), Params::try_from(hash))
    else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    if scratch.0.len() < blocks {
        scratch.0.resize(blocks, Block::default());
    }
    let argon = Argon2::new(algorithm, version, params);
    let computed = Output::init_with(expected.len(), |out| {
        argon
            .hash_password_into_with_memory(password, salt, out, &mut scratch.0[..blocks])
            .map_err(|_| argon2::password_hash::Error::Password)
    });
    // Output's equality is constant-time.
    computed.is_ok_and(|c| c == *expected)
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
        // With memory kept from check to check, the same answers.
        let mut scratch = Scratch::default();
        for _ in 0..2 {
            assert!(users
                .verify_with("app", b"correct horse", &mut scratch)
                .is_some());
            assert!(users.verify_with("app", b"wrong", &mut scratch).is_none());
        }
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
