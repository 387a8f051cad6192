//! Who may send through the relay, and as which domains (DESIGN §3).
//!
//! - [`users`]: the AUTH users file (argon2 password hashes) and password checking.
//! - [`limiter`]: failed AUTH attempts per client address, for temporary refusal.
//! - [`checks`]: the bounded pool the password checks run on.
//! - [`grants`]: the From domains a network or a user may use, as data.
//!
//! The SMTP stage asks these; it never reads the users file or the network lists itself.

pub mod checks;
pub mod grants;
pub mod limiter;
pub mod users;

pub use checks::{Busy, PasswordChecks};
pub use grants::{DomainGrant, Grants};
pub use limiter::FailureLimiter;
pub use users::{hash_password, UserError, Users};
