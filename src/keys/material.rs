//! Key generation and the public half of a key, in the forms DNS and signers need.
//!
//! Generation uses the `rsa` 0.10 and `ed25519-dalek` 3 crates (DESIGN §8); signing loads
//! the same PEM files into ring through mail-auth. Private keys are PKCS#8 PEM, the form
//! OpenSSL 3 writes by default, so operators can bring keys made elsewhere.

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Rsa,
    Ed25519,
}

impl Algorithm {
    /// The `k=` tag of the DNS record.
    pub fn dns_k(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }

    /// The `a=` tag of the signature.
    pub fn dkim_a(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa-sha256",
            Algorithm::Ed25519 => "ed25519-sha256",
        }
    }

    pub fn parse(text: &str) -> Option<Algorithm> {
        match text.trim().to_ascii_lowercase().as_str() {
            "rsa" => Some(Algorithm::Rsa),
            "ed25519" => Some(Algorithm::Ed25519),
            _ => None,
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dns_k())
    }
}

/// A freshly generated key: the private PEM (wiped from memory when dropped) and the
/// public key bytes that go into the DNS record's `p=`.
pub struct KeyMaterial {
    pub private_pem: Zeroizing<String>,
    pub public_key: Vec<u8>,
}

/// The size in bits of the public key in a DNS record's `p=` (SubjectPublicKeyInfo DER),
/// as the `rsa` crate reads the modulus; 256 for Ed25519. None when it does not parse.
pub fn public_key_bits(algorithm: Algorithm, spki_der: &[u8]) -> Option<usize> {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    match algorithm {
        Algorithm::Ed25519 => Some(256),
        Algorithm::Rsa => rsa::PublicKey::from_public_key_der(spki_der)
            .ok()
            .map(|key| key.n().bit_width() as usize),
    }
}

/// Generates a key. RSA keys under 2048 bits are refused: ring cannot sign with them and
/// receivers treat them as weak.
pub fn generate(algorithm: Algorithm, rsa_bits: usize) -> Result<KeyMaterial, String> {
    match algorithm {
        Algorithm::Rsa => {
            if !matches!(rsa_bits, 2048 | 3072 | 4096) {
                return Err(format!(
                    "RSA keys must be 2048, 3072 or 4096 bits, not {rsa_bits}"
                ));
            }
            let key = rsa::PrivateKey::new(&mut getrandom::SysRng, rsa_bits)
                .map_err(|e| format!("RSA key generation failed: {e}"))?;
            let private_pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| format!("RSA key encoding failed: {e}"))?;
            let public_key = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| format!("RSA public key encoding failed: {e}"))?
                .into_vec();
            Ok(KeyMaterial {
                private_pem,
                public_key,
            })
        }
        Algorithm::Ed25519 => {
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut())
                .map_err(|e| format!("no randomness for the Ed25519 key: {e}"))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let private_pem =
                ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_pem(&key, LineEnding::LF)
                    .map_err(|e| format!("Ed25519 key encoding failed: {e}"))?;
            Ok(KeyMaterial {
                private_pem,
                public_key: key.verifying_key().to_bytes().to_vec(),
            })
        }
    }
}

/// The public key for the DNS record from a private PEM: SubjectPublicKeyInfo DER for
/// RSA (`p=MIIBIj…`, which every verifier parses), the raw 32 bytes for Ed25519 (RFC 8463).
pub fn public_key_of(algorithm: Algorithm, private_pem: &str) -> Result<Vec<u8>, String> {
    match algorithm {
        Algorithm::Rsa => {
            let key = rsa::PrivateKey::from_pkcs8_pem(private_pem)
                .or_else(|_| {
                    <rsa::PrivateKey as rsa::pkcs1::DecodeRsaPrivateKey>::from_pkcs1_pem(
                        private_pem,
                    )
                })
                .map_err(|_| "not a readable RSA private key (PKCS#8 or PKCS#1 PEM)".to_string())?;
            Ok(key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| format!("RSA public key encoding failed: {e}"))?
                .into_vec())
        }
        Algorithm::Ed25519 => {
            let key = <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(
                private_pem,
            )
            .map_err(|_| "not a readable Ed25519 private key (PKCS#8 PEM)".to_string())?;
            Ok(key.verifying_key().to_bytes().to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_public_key_is_spki_not_pkcs1() {
        let key = generate(Algorithm::Rsa, 2048).unwrap();
        // SPKI DER of a 2048-bit key starts 30 82 01 22 30 0d 06 09 (base64 "MIIBIjAN").
        assert_eq!(&key.public_key[..4], &[0x30, 0x82, 0x01, 0x22]);
        assert!(key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(
            public_key_of(Algorithm::Rsa, &key.private_pem).unwrap(),
            key.public_key
        );
        assert_eq!(public_key_bits(Algorithm::Rsa, &key.public_key), Some(2048));
        assert_eq!(
            public_key_bits(Algorithm::Rsa, &key.public_key[..100]),
            None
        );
    }

    #[test]
    fn ed25519_public_key_is_raw_32_bytes() {
        let key = generate(Algorithm::Ed25519, 0).unwrap();
        assert_eq!(key.public_key.len(), 32);
        assert_eq!(
            public_key_of(Algorithm::Ed25519, &key.private_pem).unwrap(),
            key.public_key
        );
    }

    #[test]
    fn weak_rsa_sizes_are_refused() {
        assert!(generate(Algorithm::Rsa, 1024).is_err());
    }
}
