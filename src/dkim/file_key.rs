//! A private key read from the key store's PEM file, signing through aws-lc-rs.
//!
//! Why not ring, which mail-auth offers: RSA-2048 signing is the largest single cost of a
//! relayed message, and on our machines ring takes 0.66–0.76 ms per signature where
//! aws-lc (the same code as OpenSSL's, with its assembly) takes 0.31 ms (issue 18; bench
//! in its note). RSASSA-PKCS1-v1_5 and Ed25519 are deterministic, so the signatures are
//! byte for byte those ring made (tests/dkim_vectors.rs checks them against fixed vectors).

use crate::keys::Algorithm;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::{pem::PemObject, PrivateKeyDer};

/// RFC 8301 §3.2: signers must use at least 1024 bits and should use 2048; we refuse
/// less than 2048, as the relay always has (a 1024-bit key is weak and some receivers
/// ignore it).
const MIN_RSA_BYTES: usize = 2048 / 8;

/// Why aws-lc refused an RSA key: most often its size (aws-lc signs with 2048 to 8192
/// bits), which the key store's own reader can tell.
fn rsa_refusal(selector: &str, pem: &str) -> String {
    match crate::keys::public_key_of(Algorithm::Rsa, pem)
        .ok()
        .and_then(|spki| crate::keys::public_key_bits(Algorithm::Rsa, &spki))
    {
        Some(bits) if bits < MIN_RSA_BYTES * 8 => too_small(selector, bits),
        _ => format!("{selector}: not a usable RSA private key"),
    }
}

fn too_small(selector: &str, bits: usize) -> String {
    format!("{selector}: this RSA key has {bits} bits; DKIM keys need 2048 or more (make a new one with dkim-relay keys generate)")
}

/// The key itself. No `Debug`: nothing of it may reach a log line.
pub(crate) enum FileKey {
    Rsa { pair: RsaKeyPair, rng: SystemRandom },
    Ed25519(Ed25519KeyPair),
}

impl FileKey {
    /// Reads a PKCS#8 (or, for RSA, PKCS#1) PEM private key. The error names the selector
    /// and what is wrong, never the key's bytes.
    pub(crate) fn from_pem(
        selector: &str,
        algorithm: Algorithm,
        pem: &str,
    ) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| format!("{selector}: not a PEM private key"))?;
        match algorithm {
            Algorithm::Rsa => {
                let pair = match &der {
                    PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
                    PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
                    _ => return Err(format!("{selector}: an RSA key must be PKCS#8 or PKCS#1")),
                }
                .map_err(|_| rsa_refusal(selector, pem))?;
                if pair.public_modulus_len() < MIN_RSA_BYTES {
                    return Err(too_small(selector, pair.public_modulus_len() * 8));
                }
                Ok(FileKey::Rsa {
                    pair,
                    rng: SystemRandom::new(),
                })
            }
            Algorithm::Ed25519 => {
                let PrivateKeyDer::Pkcs8(pkcs8) = der else {
                    return Err(format!("{selector}: an Ed25519 key must be PKCS#8"));
                };
                // OpenSSL writes PKCS#8 v1 without the public key, which only this
                // constructor accepts (DESIGN §8).
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8.secret_pkcs8_der())
                    .map(FileKey::Ed25519)
                    .map_err(|_| format!("{selector}: not a usable Ed25519 key"))
            }
        }
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        match self {
            FileKey::Rsa { .. } => Algorithm::Rsa,
            FileKey::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// Signs `data` as DKIM does: RSASSA-PKCS1-v1_5 over SHA-256 of the data, or Ed25519
    /// over the SHA-256 digest of the data (RFC 8463 §3, "PureEdDSA" of the hash).
    pub(crate) fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            FileKey::Rsa { pair, rng } => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, rng, data, &mut signature)
                    .map_err(|_| "RSA signing failed".to_string())?;
                Ok(signature)
            }
            FileKey::Ed25519(pair) => {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
                Ok(pair.sign(digest.as_ref()).as_ref().to_vec())
            }
        }
    }

    /// The public key's bytes (SPKI DER for RSA, the raw 32 bytes for Ed25519): only for
    /// tests that check a loaded key against its DNS record.
    #[cfg(test)]
    pub(crate) fn public_key(&self) -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair;
        match self {
            FileKey::Rsa { pair, .. } => pair.public_key().as_ref().to_vec(),
            FileKey::Ed25519(pair) => pair.public_key().as_ref().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;
    use ring::signature::{UnparsedPublicKey, ED25519, RSA_PKCS1_2048_8192_SHA256};

    const DATA: &[u8] = b"from:a@example.com\r\ndkim-signature:v=1; a=rsa-sha256; b=";

    #[test]
    fn an_rsa_signature_verifies_with_ring() {
        let material = generate(Algorithm::Rsa, 2048).unwrap();
        let key = FileKey::from_pem("s1", Algorithm::Rsa, &material.private_pem).unwrap();
        assert_eq!(key.algorithm(), Algorithm::Rsa);
        let signature = key.sign(DATA).unwrap();
        assert_eq!(signature.len(), 256);
        // ring is an independent implementation; it takes the PKCS#1 RSAPublicKey.
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_key());
        public.verify(DATA, &signature).unwrap();
        assert!(public.verify(b"other data", &signature).is_err());
    }

    #[test]
    fn an_ed25519_signature_is_over_the_sha256_of_the_data() {
        let material = generate(Algorithm::Ed25519, 0).unwrap();
        let key = FileKey::from_pem("s2", Algorithm::Ed25519, &material.private_pem).unwrap();
        let signature = key.sign(DATA).unwrap();
        let public = UnparsedPublicKey::new(&ED25519, key.public_key());
        let digest = ring::digest::digest(&ring::digest::SHA256, DATA);
        public.verify(digest.as_ref(), &signature).unwrap();
        // RFC 8463: the signature is over the digest, not the data itself.
        assert!(public.verify(DATA, &signature).is_err());
    }

    #[test]
    fn a_pkcs1_rsa_key_as_openssl_writes_it_loads() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        let material = generate(Algorithm::Rsa, 2048).unwrap();
        let pkcs1 = rsa::PrivateKey::from_pkcs8_pem(&material.private_pem)
            .unwrap()
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let key = FileKey::from_pem("s3", Algorithm::Rsa, &pkcs1).unwrap();
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_key());
        public.verify(DATA, &key.sign(DATA).unwrap()).unwrap();
    }

    #[test]
    fn wrong_or_damaged_keys_are_refused_without_their_bytes() {
        let rsa = generate(Algorithm::Rsa, 2048).unwrap();
        let ed = generate(Algorithm::Ed25519, 0).unwrap();
        let refusals = [
            FileKey::from_pem("a", Algorithm::Ed25519, &rsa.private_pem),
            FileKey::from_pem("b", Algorithm::Rsa, &ed.private_pem),
            FileKey::from_pem("c", Algorithm::Rsa, "not a key"),
            FileKey::from_pem("d", Algorithm::Rsa, &rsa.private_pem.replace('A', "B")),
        ];
        for (refused, selector) in refusals.into_iter().zip(["a:", "b:", "c:", "d:"]) {
            let Err(e) = refused else {
                panic!("{selector} loaded")
            };
            assert!(e.starts_with(selector), "{e}");
            assert!(!e.contains("MII"), "{e}");
        }
    }
}
