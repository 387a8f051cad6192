//! Stage 3 of the pipeline: DKIM signing, at each delivery attempt, with the keys that are
//! active at that moment (DESIGN §2, §5).
//!
//! The boundary types are [`KeyRing`] (what may be signed, loaded from the key store) and
//! [`sign`], which turns a spooled message into the `DKIM-Signature` header fields to
//! prepend. mail-auth 0.13.3 builds the signatures; file keys sign through aws-lc-rs
//! (file_key.rs), token keys in their PKCS#11 token.

mod body;
mod file_key;
mod headers;
mod keyring;
mod sign;

pub use body::signable_prefix;
pub use headers::{header_list, OVERSIGNED, SIGNED_WHEN_PRESENT};
pub use keyring::{DomainKeys, KeyLookup, KeyRing, LoadedKey, SharedKeyRing};
pub use sign::{sign, SignError, Signature};
