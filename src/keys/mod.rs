//! The key store: one folder per domain under the keys directory, a PEM file per selector
//! (mode 0600) and a `state.json` per domain recording each selector slot.
//!
//! Layout (DESIGN §6), for example:
//! ```text
//! keys/example.com/state.json
//! keys/example.com/s1.pem      RSA, active
//! keys/example.com/e1.pem      Ed25519, active
//! ```
//! With `[keys] backend = "pkcs11"` the private keys are objects in a PKCS#11 token
//! instead ([`Token`]); the state files stay here and record each key's CKA_ID.
//!
//! The slot states are the ones scheduled rotation walks through; this module only stores
//! them. Private key bytes never leave this module except into a signer, and no type
//! here that holds them implements `Debug`.

mod dns_seen;
mod lock;
mod material;
mod pkcs11;
mod pkcs11_objects;
mod record;
mod state;
mod store;

pub use dns_seen::{DnsSeen, SelectorSeen, Served};
pub use lock::StoreLock;
pub use material::{generate, public_key_bits, public_key_of, Algorithm, KeyMaterial};
pub use pkcs11::{Token, TokenError};
pub use pkcs11_objects::{id_from_hex, id_hex, TokenKeyPair};
pub use record::{public_key_bytes, DnsRecord};
pub use state::{DnsCheck, DnsOutcome, DomainState, HookRun, Slot, SlotState};
pub use store::{KeyError, KeyStore, NewKey};
