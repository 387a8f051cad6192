//! One message made ready to send: read from the spool, converted to the form the
//! upstream's connection takes (message::transport_form) and signed for the upstream's
//! profile, in one hop to the blocking pool. What is signed is what is sent.
//!
//! The form depends on the EHLO of the connection the message goes out on, so a message
//! is prepared after its connection is taken or opened (see `Upstream::send`), not
//! before: holding a connection for the millisecond of signing costs less than signing
//! twice or guessing. Each (profile, form) is prepared once per attempt: on failover,
//! or a reconnect that sees other capabilities, signatures are made again only when the
//! profile or the form differs.

use super::connection::Connection;
use super::profile::SigningProfile;
use super::verdict::Cause;
use super::DeliveryContext;
use crate::dkim::{sign, DomainKeys, KeyLookup};
use crate::message::encoded_words::Unencodable;
use crate::message::transport_form::{convert, Form, Offer, Unconvertible, Uses};
use crate::spool::{Envelope, SpooledMessage};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// Why a message is not ready to send.
pub(super) enum NotReady {
    /// Try again later (the spool, the signer, our DNS).
    Defer(Cause),
    /// It has no form this upstream takes: every recipient fails, with a DSN.
    Fail(Cause),
}

/// The message in one form, with its signature fields.
pub(super) struct Prepared {
    profile: SigningProfile,
    pub form: Form,
    signatures: String,
    body: Body,
}

enum Body {
    /// The form is the stored bytes.
    Stored(Arc<SpooledMessage>),
    Converted(Vec<u8>),
}

impl Prepared {
    /// What goes after DATA: the signature fields, then the message.
    pub fn parts(&self) -> [&[u8]; 2] {
        let message = match &self.body {
            Body::Stored(s) => s.message(),
            Body::Converted(c) => c,
        };
        [self.signatures.as_bytes(), message]
    }
}

pub(super) struct Preparer<'a> {
    ctx: &'a DeliveryContext,
    env: &'a Envelope,
    /// None: one of the relay's own bounces for a domain with no keys (sent unsigned).
    keys: Option<Arc<DomainKeys>>,
    /// Read by the first preparation, reused by the others.
    spooled: Mutex<Option<Arc<SpooledMessage>>>,
    made: Mutex<Vec<Arc<Prepared>>>,
}

impl<'a> Preparer<'a> {
    /// Finds the keys for the message's domain; an Err defers every recipient.
    pub fn new(ctx: &'a DeliveryContext, env: &'a Envelope) -> Result<Preparer<'a>, Cause> {
        let keys = match ctx.keys.current().lookup(&env.from_domain) {
            KeyLookup::Ready(keys) => Some(keys),
            // Only the relay's own bounces may go unsigned, and only when their domain has
            // no keys at all (DESIGN: never unsigned for a domain that has keys).
            KeyLookup::Unknown if env.is_bounce() => None,
            KeyLookup::Unusable(reason) => {
                return Err(Cause::relay(format!(
                    "no usable key for {}: {reason}",
                    env.from_domain
                )))
            }
            KeyLookup::Unknown => {
                return Err(Cause::relay(format!(
                    "no key configured for {}",
                    env.from_domain
                )))
            }
        };
        Ok(Preparer {
            ctx,
            env,
            keys,
            spooled: Mutex::new(None),
            made: Mutex::new(Vec::new()),
        })
    }

    /// The form for a connection, from its EHLO. `smtp.upstream_8bitmime = false` counts
    /// every upstream as one without 8BITMIME (for a later hop that cannot carry 8 bits).
    pub fn form_for(&self, conn: &Connection) -> Form {
        let carry_8bit = self.ctx.live.current().smtp.upstream_8bitmime;
        let u = &self.env.utf8;
        // Addresses are read from the envelope itself too, so a spool file from before
        // the flags existed still gets the right form.
        let utf8_addresses =
            !self.env.mail_from.is_ascii() || self.env.rcpts.iter().any(|r| !r.is_ascii());
        Form::for_upstream(
            Uses {
                utf8: u.requested || u.any() || utf8_addresses,
                utf8_headers: u.headers,
                eight_bit: self.env.eight_bit,
            },
            Offer {
                smtputf8: conn.smtputf8,
                eight_bit_mime: conn.eight_bit && carry_8bit,
            },
        )
    }

    /// The message in `form`, signed for `profile`: made once, then reused.
    pub async fn get(
        &self,
        profile: &SigningProfile,
        form: Form,
    ) -> Result<Arc<Prepared>, NotReady> {
        let env = self.env;
        if let Some(p) = self
            .made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|p| p.profile == *profile && p.form == form)
        {
            return Ok(p.clone());
        }
        if let Some(keys) = &self.keys {
            // Only the selectors this profile signs with count (an RSA-only route is
            // not held for a lost Ed25519 record).
            let signing = keys
                .keys
                .iter()
                .filter(|k| !profile.rsa_only || k.algorithm == crate::keys::Algorithm::Rsa)
                .map(|k| k.selector.as_str());
            if let Some(why) = self.ctx.dns.hold(&keys.domain, signing) {
                return Err(NotReady::Defer(Cause::our_dns(why)));
            }
        }
        let read = self
            .spooled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let spool = self.ctx.spool.clone();
        let id = env.id.clone();
        let keys = self.keys.clone();
        let signing_profile = profile.clone();
        // Reading, converting and signing are blocking and CPU work (RSA takes a
        // millisecond or more): one hop to the blocking pool for all three, so the
        // runtime's few worker threads keep answering SMTP clients meanwhile.
        let made = tokio::task::spawn_blocking(move || {
            let spooled = match read {
                Some(s) => s,
                None => Arc::new(spool.read(&id).map_err(Step::Read)?),
            };
            let converted = match convert(spooled.message(), form) {
                Ok(Cow::Borrowed(_)) => None,
                Ok(Cow::Owned(c)) => Some(c),
                Err(e) => return Err(Step::Convert(spooled, e)),
            };
            let started = std::time::Instant::now();
            let signatures = match &keys {
                Some(keys) => {
                    let leave_out: Vec<&str> = signing_profile
                        .leave_out
                        .iter()
                        .map(String::as_str)
                        .collect();
                    let message = converted.as_deref().unwrap_or(spooled.message());
                    sign(keys, message, &leave_out, signing_profile.rsa_only)
                        .map_err(|e| Step::Sign(spooled.clone(), e.to_string()))?
                }
                None => Vec::new(),
            };
            Ok((spooled, converted, signatures, started.elapsed()))
        })
        .await
        .map_err(|e| NotReady::Defer(Cause::relay(format!("preparing task failed: {e}"))))?;
        let (spooled, converted, signatures, took) = match made {
            Ok(made) => made,
            Err(Step::Read(e)) => {
                return Err(NotReady::Defer(Cause::relay(format!(
                    "cannot read the spooled message: {e}"
                ))))
            }
            Err(Step::Convert(spooled, e)) => {
                self.keep(spooled);
                tracing::warn!(queue_id = %env.id, reason = %e, "the message has no form this upstream takes");
                return Err(NotReady::Fail(unconvertible(&e)));
            }
            Err(Step::Sign(spooled, e)) => {
                self.keep(spooled);
                return Err(NotReady::Defer(Cause::relay(e)));
            }
        };
        self.keep(spooled.clone());
        if converted.is_some() {
            tracing::info!(queue_id = %env.id, form = form.describe(), "converted for an upstream without SMTPUTF8 or 8BITMIME; signed as converted");
        }
        let mut headers = String::new();
        match &self.keys {
            Some(keys) => {
                crate::metrics::global().signing.observe(took);
                for s in &signatures {
                    tracing::info!(queue_id = %env.id, d = %keys.domain, s = %s.selector, a = s.algorithm.dkim_a(), "signed");
                    crate::metrics::global().signature(
                        &keys.domain,
                        &s.selector,
                        s.algorithm.dkim_a(),
                    );
                    headers.push_str(&s.header);
                }
            }
            None => {
                tracing::info!(queue_id = %env.id, from_domain = %env.from_domain, "bounce sent unsigned: no keys exist for its domain");
            }
        }
        let prepared = Arc::new(Prepared {
            profile: profile.clone(),
            form,
            signatures: headers,
            body: match converted {
                Some(c) => Body::Converted(c),
                None => Body::Stored(spooled),
            },
        });
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(prepared.clone());
        Ok(prepared)
    }

    fn keep(&self, spooled: Arc<SpooledMessage>) {
        *self.spooled.lock().unwrap_or_else(|e| e.into_inner()) = Some(spooled);
    }
}

/// Where the blocking part stopped (the message, once read, comes back to be kept).
enum Step {
    Read(std::io::Error),
    Convert(Arc<SpooledMessage>, Unconvertible),
    Sign(Arc<SpooledMessage>, String),
}

/// The permanent failure for a message with no form the upstream takes.
fn unconvertible(e: &Unconvertible) -> Cause {
    match e {
        Unconvertible::Header(Unencodable::Address(field)) => {
            Cause::needs_smtputf8(&format!("an address in the {field} header field"))
        }
        other => Cause::unconvertible(other.to_string()),
    }
}
