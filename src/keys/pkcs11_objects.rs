//! Key objects inside a PKCS#11 token: made there (C_GenerateKeyPair) or imported once
//! for migration (C_CreateObject), used for signing (C_Sign), read for their public half
//! and destroyed after retirement. A key is found by its CKA_ID, which the state file
//! records (hex); the private key is CKA_SENSITIVE and not CKA_EXTRACTABLE, so its bytes
//! never leave the token.

use super::pkcs11::{Token, TokenError};
use super::Algorithm;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

/// DER of the OID id-Ed25519 (1.3.101.112), the CKA_EC_PARAMS of an Ed25519 key.
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// A new key in the token: its CKA_ID (for the state file) and its public key in the
/// DNS record's form.
pub struct TokenKeyPair {
    pub id: Vec<u8>,
    pub public_key: Vec<u8>,
}

/// The CKA_ID as the state file spells it.
pub fn id_hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn id_from_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Token {
    /// Generates a key pair in the token, labelled `dkim-relay <domain> <selector>`.
    pub fn generate(
        &self,
        label: &str,
        algorithm: Algorithm,
        rsa_bits: usize,
    ) -> Result<TokenKeyPair, TokenError> {
        if algorithm == Algorithm::Rsa && !matches!(rsa_bits, 2048 | 3072 | 4096) {
            return Err(self.error(format!(
                "RSA keys must be 2048, 3072 or 4096 bits, not {rsa_bits}"
            )));
        }
        self.with_session(|session| {
            let id = new_id(session).map_err(|e| self.ck_error(e))?;
            let common_pub = vec![
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
                Attribute::Id(id.clone()),
                Attribute::Label(label.as_bytes().to_vec()),
            ];
            let private = private_template(&id, label);
            let (mechanism, mut public) = match algorithm {
                Algorithm::Rsa => (
                    Mechanism::RsaPkcsKeyPairGen,
                    vec![
                        Attribute::ModulusBits((rsa_bits as u64).into()),
                        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                    ],
                ),
                Algorithm::Ed25519 => (
                    Mechanism::EccEdwardsKeyPairGen,
                    vec![Attribute::EcParams(ED25519_OID.to_vec())],
                ),
            };
            public.extend(common_pub);
            let (public_handle, _) = session
                .generate_key_pair(&mechanism, &public, &private)
                .map_err(|e| self.ck_error(e))?;
            let public_key = public_key_of(self, session, public_handle, algorithm)?;
            Ok(TokenKeyPair { id, public_key })
        })
    }

    /// Imports a private key (PKCS#8 or PKCS#1 PEM) as a sensitive token object, with its
    /// public key next to it, for migrating from files.
    pub fn import(
        &self,
        label: &str,
        algorithm: Algorithm,
        private_pem: &str,
    ) -> Result<TokenKeyPair, TokenError> {
        let (private_attrs, public_attrs, public_key) = match algorithm {
            Algorithm::Rsa => rsa_import_attributes(private_pem).map_err(|e| self.error(e))?,
            Algorithm::Ed25519 => {
                ed25519_import_attributes(private_pem).map_err(|e| self.error(e))?
            }
        };
        self.with_session(|session| {
            let id = new_id(session).map_err(|e| self.ck_error(e))?;
            let mut private = private_template(&id, label);
            private.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
            private.extend(private_attrs);
            let mut public = vec![
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::Id(id.clone()),
                Attribute::Label(label.as_bytes().to_vec()),
            ];
            public.extend(public_attrs);
            session
                .create_object(&private)
                .map_err(|e| self.ck_error(e))?;
            session
                .create_object(&public)
                .map_err(|e| self.ck_error(e))?;
            Ok(TokenKeyPair {
                id,
                public_key: public_key.clone(),
            })
        })
    }

    /// Signs as DKIM does: RSASSA-PKCS1-v1_5 with SHA-256 over `data` (CKM_SHA256_RSA_PKCS),
    /// or Ed25519 over the SHA-256 digest of `data` (RFC 8463 §3, CKM_EDDSA).
    pub fn sign(
        &self,
        id: &[u8],
        algorithm: Algorithm,
        data: &[u8],
    ) -> Result<Vec<u8>, TokenError> {
        let signed = self.with_session(|session| {
            let key = self.find(session, id, ObjectClass::PRIVATE_KEY)?;
            let signed = match algorithm {
                Algorithm::Rsa => session.sign(&Mechanism::Sha256RsaPkcs, key, data),
                Algorithm::Ed25519 => {
                    let digest = ring::digest::digest(&ring::digest::SHA256, data);
                    session.sign(
                        &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519)),
                        key,
                        digest.as_ref(),
                    )
                }
            };
            signed.map_err(|e| self.ck_error(e))
        });
        if let Err(e) = &signed {
            if e.code.is_none() {
                tracing::warn!(token = %self.label(), error = %e.problem, "signing key not found in the token; the token is reopened at next use");
                self.reopen_later();
            }
        }
        signed
    }

    /// The public key of a stored key pair, in the DNS record's form.
    pub fn public_key(&self, id: &[u8], algorithm: Algorithm) -> Result<Vec<u8>, TokenError> {
        self.with_session(|session| {
            let handle = self.find(session, id, ObjectClass::PUBLIC_KEY)?;
            public_key_of(self, session, handle, algorithm)
        })
    }

    /// Destroys every object with this CKA_ID (both halves of a retired key). A key already
    /// gone is not an error: a crash may have come between destroying and recording.
    pub fn destroy(&self, id: &[u8]) -> Result<usize, TokenError> {
        self.with_session(|session| {
            let objects = session
                .find_objects(&[Attribute::Id(id.to_vec())])
                .map_err(|e| self.ck_error(e))?;
            for object in &objects {
                session
                    .destroy_object(*object)
                    .map_err(|e| self.ck_error(e))?;
            }
            Ok(objects.len())
        })
    }

    fn find(
        &self,
        session: &Session,
        id: &[u8],
        class: ObjectClass,
    ) -> Result<ObjectHandle, TokenError> {
        let found = session
            .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
            .map_err(|e| self.ck_error(e))?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(self.error(format!(
                "no {} with CKA_ID {} (another token in the slot, its files restored from an old copy, or the key deleted; if deleted, `dkim-relay keys rotate --emergency` replaces it)",
                if class == ObjectClass::PRIVATE_KEY { "private key" } else { "public key" },
                id_hex(id)
            ))),
            _ => Err(self.error(format!(
                "{} objects share CKA_ID {}; remove the extra ones",
                found.len(),
                id_hex(id)
            ))),
        }
    }
}

/// A fresh CKA_ID from the token's random generator.
fn new_id(session: &Session) -> cryptoki::error::Result<Vec<u8>> {
    session.generate_random_vec(16)
}

/// Attributes every private key of ours has: kept on the token, usable only after login,
/// for signing only, and never readable or exportable.
fn private_template(id: &[u8], label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn public_key_of(
    token: &Token,
    session: &Session,
    handle: ObjectHandle,
    algorithm: Algorithm,
) -> Result<Vec<u8>, TokenError> {
    let wanted: &[AttributeType] = match algorithm {
        Algorithm::Rsa => &[AttributeType::Modulus, AttributeType::PublicExponent],
        Algorithm::Ed25519 => &[AttributeType::EcPoint],
    };
    let attrs = session
        .get_attributes(handle, wanted)
        .map_err(|e| token.ck_error(e))?;
    let mut modulus = None;
    let mut exponent = None;
    let mut point = None;
    for attr in attrs {
        match attr {
            Attribute::Modulus(n) => modulus = Some(n),
            Attribute::PublicExponent(e) => exponent = Some(e),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    match algorithm {
        Algorithm::Rsa => match (modulus, exponent) {
            (Some(n), Some(e)) => Ok(rsa_spki(&n, &e)),
            _ => Err(token.error("the RSA public key has no modulus or exponent")),
        },
        Algorithm::Ed25519 => {
            let point =
                point.ok_or_else(|| token.error("the Ed25519 public key has no CKA_EC_POINT"))?;
            // Modules store the point DER-wrapped (OCTET STRING, 04 20 …) or raw.
            match point.as_slice() {
                [0x04, 0x20, rest @ ..] if rest.len() == 32 => Ok(rest.to_vec()),
                raw if raw.len() == 32 => Ok(raw.to_vec()),
                _ => Err(token.error("the Ed25519 public key is not 32 bytes")),
            }
        }
    }
}

/// SubjectPublicKeyInfo DER of an RSA key (what the file backend publishes in `p=`).
fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let rsa_key = der(0x30, &[der_uint(modulus), der_uint(exponent)].concat());
    let mut bits = vec![0u8];
    bits.extend(rsa_key);
    let algorithm = der(
        0x30,
        &[
            // rsaEncryption 1.2.840.113549.1.1.1, NULL parameters
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ][..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    der(0x30, &[algorithm, der(0x03, &bits)].concat())
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = match bytes.iter().position(|&b| b != 0) {
        Some(first) => &bytes[first..],
        None => &[0],
    };
    let mut value = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        value.push(0);
    }
    value.extend_from_slice(trimmed);
    der(0x02, &value)
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

type ImportAttributes = (Vec<Attribute>, Vec<Attribute>, Vec<u8>);

fn rsa_import_attributes(pem: &str) -> Result<ImportAttributes, String> {
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    let key = rsa::PrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| <rsa::PrivateKey as rsa::pkcs1::DecodeRsaPrivateKey>::from_pkcs1_pem(pem))
        .map_err(|_| "not a readable RSA private key (PKCS#8 or PKCS#1 PEM)".to_string())?;
    let n = key.n().to_be_bytes().to_vec();
    let e = key.e().to_be_bytes().to_vec();
    let primes = key.primes();
    let [p, q] = primes else {
        return Err("multi-prime RSA keys cannot be imported".into());
    };
    let mut private = vec![
        Attribute::KeyType(KeyType::RSA),
        Attribute::Modulus(n.clone()),
        Attribute::PublicExponent(e.clone()),
        Attribute::PrivateExponent(key.d().to_be_bytes().to_vec()),
        Attribute::Prime1(p.to_be_bytes().to_vec()),
        Attribute::Prime2(q.to_be_bytes().to_vec()),
    ];
    if let (Some(dp), Some(dq), Some(qinv)) = (key.dp(), key.dq(), key.qinv()) {
        private.push(Attribute::Exponent1(dp.to_be_bytes().to_vec()));
        private.push(Attribute::Exponent2(dq.to_be_bytes().to_vec()));
        private.push(Attribute::Coefficient(
            qinv.retrieve().to_be_bytes().to_vec(),
        ));
    }
    let public = vec![
        Attribute::KeyType(KeyType::RSA),
        Attribute::Modulus(n.clone()),
        Attribute::PublicExponent(e.clone()),
    ];
    Ok((private, public, rsa_spki(&n, &e)))
}

fn ed25519_import_attributes(pem: &str) -> Result<ImportAttributes, String> {
    let key =
        <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(pem)
            .map_err(|_| "not a readable Ed25519 private key (PKCS#8 PEM)".to_string())?;
    let public = key.verifying_key().to_bytes().to_vec();
    let private = vec![
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::EcParams(ED25519_OID.to_vec()),
        Attribute::Value(key.to_bytes().to_vec()),
    ];
    let mut point = vec![0x04, 0x20];
    point.extend_from_slice(&public);
    let public_attrs = vec![
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::EcParams(ED25519_OID.to_vec()),
        Attribute::EcPoint(point),
    ];
    Ok((private, public_attrs, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_matches_the_rsa_crate() {
        use rsa::pkcs8::EncodePublicKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let public = key.to_public_key();
        let ours = rsa_spki(&public.n().to_be_bytes(), &public.e().to_be_bytes());
        assert_eq!(ours, public.to_public_key_der().unwrap().into_vec());
    }

    #[test]
    fn ids_round_trip_as_hex() {
        assert_eq!(id_hex(&[0, 0xab]), "00ab");
        assert_eq!(id_from_hex("00ab"), Some(vec![0, 0xab]));
        assert_eq!(id_from_hex("0"), None);
        assert_eq!(id_from_hex("zz"), None);
    }
}
