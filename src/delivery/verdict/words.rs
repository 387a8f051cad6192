//! mail-send, rustls and io errors in the words an operator reads, with the usual fix.
//! Library names ("UnknownIssuer", "Other(OtherError(CaUsedAsEndEntity))") never reach a
//! log line: each case the relay meets is said here, once.

use super::{Cause, Phase, UpstreamReply};
use rustls::{AlertDescription, CertificateError};

pub(super) fn from_send(error: &mail_send::Error, phase: Phase, host: &str) -> Cause {
    use mail_send::Error as E;
    match error {
        E::Io(e) => io(e, phase),
        E::Tls(e) => tls(e, host),
        E::Timeout => Cause::transport(format!(
            "no answer within the timeout during {}",
            phase.name()
        ))
        .with_fix(match phase {
            Phase::Connect => "check host and port, and that a firewall lets this machine reach them; connect_timeout sets the wait",
            Phase::Tls => "check that tls matches the port (\"implicit\" for 465, \"starttls\" for 587)",
            _ => "the upstream is slow or stuck; command_timeout sets the wait",
        }),
        E::UnparseableReply => Cause::transport(format!(
            "the upstream closed the connection or sent something that is not SMTP during {}",
            phase.name()
        ))
        .with_fix(match phase {
            Phase::Connect => "check that port speaks SMTP; with tls = \"starttls\" on port 465 use tls = \"implicit\"",
            _ => "try again later; if it persists, check the upstream's own logs",
        }),
        E::UnexpectedReply(r) => {
            let mut cause = Cause::reply(UpstreamReply::from_response(r));
            cause.detail = format!("the upstream refused {}", phase.name());
            cause
        }
        // A 2xx here is no refusal: the upstream took AUTH as some other command.
        E::AuthenticationFailed(r) if r.code < 300 => Cause {
            reply: Some(UpstreamReply::from_response(r)),
            ..Cause::our_config("the upstream answered AUTH with this instead of 235, so it does not take AUTH there")
        }
        .with_fix("check host, port and tls, or remove username if the upstream needs no AUTH"),
        E::AuthenticationFailed(r) => auth_refused(UpstreamReply::from_response(r)),
        E::MissingCredentials => Cause::our_config("no credentials for AUTH")
            .with_fix("set username and password_file"),
        E::UnsupportedAuthMechanism => Cause::our_config(
            "the upstream offers no AUTH mechanism the relay can use with a password (PLAIN, LOGIN, CRAM-MD5)",
        )
        .with_fix("if the upstream needs no AUTH on this port, remove username and password_file; AUTH is often offered only after STARTTLS, so check tls"),
        E::Auth(_) => Cause::our_config("the AUTH exchange failed").with_fix("check username and password_file"),
        E::InvalidTLSName => Cause::our_config(format!("\"{host}\" is not a name a TLS certificate can be checked against"))
            .with_fix("set host to the upstream's DNS name"),
        E::MissingStartTls => Cause::our_config("the upstream does not offer STARTTLS, which tls = \"starttls\" requires")
            .with_fix("if the port speaks TLS from the first byte (465), set tls = \"implicit\"; otherwise use the provider's submission port (587); tls = \"none\" only on loopback or with allow_plaintext = true"),
        E::Base64(_) => Cause::our_config("the upstream's AUTH challenge is not valid base64")
            .with_fix("check host and port: this does not look like the upstream's submission service"),
        E::MissingMailFrom | E::MissingRcptTo => Cause::relay("internal: incomplete envelope"),
    }
}

/// 535 and friends: the credentials, or the account, are refused.
fn auth_refused(reply: UpstreamReply) -> Cause {
    let text = reply.text.to_ascii_lowercase();
    let fix = if text.contains("basic authentication")
        || text.contains("5.7.139")
        || text.contains("5.7.30")
    {
        "the tenant has Basic authentication for SMTP AUTH turned off: enable Authenticated SMTP for the mailbox, use OAuth 2.0, or send through the tenant's connector (TENANT.mail.protection.outlook.com, port 25) instead"
    } else if text.contains("application-specific password") {
        "Google wants an app password (or OAuth 2.0) for this account: put an app password in password_file"
    } else {
        "check username and password_file (the first line of the file is the password; for Amazon SES it is the SMTP password derived for the region, not the IAM secret key)"
    };
    Cause {
        reply: Some(reply),
        ..Cause::our_config("AUTH refused")
    }
    .with_fix(fix)
}

fn io(e: &std::io::Error, phase: Phase) -> Cause {
    use std::io::ErrorKind as K;
    let (words, fix) = match e.kind() {
        K::ConnectionRefused => (
            "connection refused: nothing listens there",
            "check host and port",
        ),
        K::TimedOut => (
            "the connection timed out",
            "check host and port, and that a firewall lets this machine reach them",
        ),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => (
            "the upstream closed the connection",
            if phase == Phase::Tls {
                "the upstream gave up on the TLS handshake: check that tls matches the port (\"implicit\" for 465, \"starttls\" for 587)"
            } else {
                "try again later; if it persists, check that the upstream accepts connections from this machine's address"
            },
        ),
        K::NetworkUnreachable | K::HostUnreachable => (
            "no route to the upstream",
            "check this machine's network and the upstream's address",
        ),
        K::AddrNotAvailable => (
            "the upstream's address cannot be used from here",
            "check host",
        ),
        // getaddrinfo failures come as Other/Uncategorized with their own text.
        _ if e.to_string().contains("lookup") => (
            "the host name does not resolve",
            "check host and this machine's DNS",
        ),
        _ => {
            return Cause::transport(format!("connection error: {e}"));
        }
    };
    Cause::transport(format!("{words} ({e})")).with_fix(fix)
}

fn tls(e: &rustls::Error, host: &str) -> Cause {
    use rustls::Error as T;
    match e {
        T::InvalidCertificate(c) => certificate(c, host),
        T::AlertReceived(alert) => Cause::transport(format!(
            "the upstream ended the TLS handshake: {}",
            alert_words(*alert)
        ))
        .with_fix("the upstream and the relay (TLS 1.2 and 1.3) share no protocol version or cipher, or the upstream wants a client certificate"),
        T::InvalidMessage(_) | T::InappropriateMessage { .. } | T::InappropriateHandshakeMessage { .. } => Cause::transport(
            "the upstream does not speak TLS on this port",
        )
        .with_fix("with tls = \"implicit\" on a STARTTLS port (587 or 25), set tls = \"starttls\"; implicit TLS is port 465"),
        T::PeerIncompatible(_) => Cause::transport("the upstream's TLS is too old for the relay (TLS 1.2 and 1.3 only)")
            .with_fix("the upstream must support TLS 1.2 or later"),
        other => Cause::transport(format!("TLS error: {other}")),
    }
}

/// The certificate did not verify: always the operator's to fix (a setting here, or the
/// upstream's certificate), so logged at ERROR; mail waits meanwhile.
fn certificate(c: &CertificateError, host: &str) -> Cause {
    use CertificateError as C;
    let (words, fix): (String, String) = match c {
        C::UnknownIssuer => (
            "the upstream's certificate is not issued by a certificate authority the relay trusts (unknown issuer; a private CA or a self-signed certificate)".into(),
            "set ca_file to a PEM file with the CA certificate that issued it (for a self-signed certificate, the certificate itself); without ca_file the system's CA store is used".into(),
        ),
        C::NotValidForName => (
            format!("the upstream's certificate is not valid for {host}"),
            "set host to a name the certificate has, or have the upstream's certificate include this name".into(),
        ),
        C::NotValidForNameContext { presented, .. } => {
            let names: Vec<&str> = presented.iter().map(|n| plain_name(n)).collect();
            match names.first() {
                Some(first) => (
                    format!(
                        "the upstream's certificate is not valid for {host}; its names are {}",
                        names.join(", ")
                    ),
                    format!("set host to a name the certificate has (host = \"{first}\"), or have the upstream's certificate include {host}"),
                ),
                None => (
                    format!("the upstream's certificate is not valid for {host}; it has no subject alternative names"),
                    format!("have the upstream's certificate include {host}"),
                ),
            }
        }
        C::Expired | C::ExpiredContext { .. } => (
            "the upstream's certificate has expired".into(),
            "the upstream must renew its certificate; check this machine's clock too".into(),
        ),
        C::NotValidYet | C::NotValidYetContext { .. } => (
            "the upstream's certificate is not valid yet".into(),
            "check this machine's clock".into(),
        ),
        C::Revoked => (
            "the upstream's certificate is revoked".into(),
            "the upstream must replace its certificate".into(),
        ),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => (
            "the upstream's certificate is not for TLS servers".into(),
            "the upstream must present a server certificate".into(),
        ),
        C::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => (
                "the upstream presents a CA certificate as its own (CA used as end entity), as a self-signed certificate made with `openssl req -x509` is".into(),
                "the upstream needs a server certificate (not marked as a CA) issued by a CA; put that CA in ca_file. Trusting the CA certificate itself does not help".into(),
            ),
            Some(webpki::Error::EndEntityUsedAsCa) => (
                "the upstream's certificate chain uses a server certificate as a CA".into(),
                "the upstream must present a proper chain; ca_file must hold the CA, not the server certificate".into(),
            ),
            _ => (
                format!("the upstream's certificate does not verify: {other}"),
                "check the upstream's certificate chain and ca_file".into(),
            ),
        },
        other => (
            format!("the upstream's certificate does not verify: {other}"),
            "check the upstream's certificate chain and ca_file".into(),
        ),
    };
    Cause::our_config(words).with_fix(fix)
}

/// webpki reports the certificate's names in its Debug spelling (`DnsName("a.test")`,
/// `IpAddress(192.0.2.1)`): the name alone is what an operator types into `host`.
fn plain_name(presented: &str) -> &str {
    let inner = presented
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        });
    inner.unwrap_or(presented)
}

fn alert_words(alert: AlertDescription) -> String {
    use AlertDescription as A;
    match alert {
        A::HandshakeFailure => "handshake failure".into(),
        A::ProtocolVersion => "no common protocol version".into(),
        A::InsufficientSecurity => "insufficient security".into(),
        A::CertificateRequired => "a client certificate is required".into(),
        A::UnrecognisedName => "the server does not know the name the relay asked for (SNI)".into(),
        A::AccessDenied => "access denied".into(),
        A::InternalError => "the server's internal error".into(),
        other => format!("alert {}", u8::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Fault;
    use super::*;

    #[test]
    fn certificate_errors_name_the_setting_to_change() {
        let cause = tls(&rustls::Error::InvalidCertificate(C::UnknownIssuer), "h");
        assert_eq!(cause.fault, Fault::OurConfig);
        assert!(cause.fix_field().contains("ca_file"));
        let wrong = CertificateError::NotValidForNameContext {
            expected: rustls_pki_types::ServerName::try_from("wrong.test")
                .unwrap()
                .to_owned(),
            presented: vec!["DnsName(\"right.test\")".into()],
        };
        let cause = tls(&rustls::Error::InvalidCertificate(wrong), "wrong.test");
        assert!(
            cause.fix_field().contains("host = \"right.test\""),
            "{cause:?}"
        );
        assert!(
            cause.detail.ends_with("its names are right.test"),
            "{cause:?}"
        );
        let ca = CertificateError::Other(rustls::OtherError(std::sync::Arc::new(
            webpki::Error::CaUsedAsEndEntity,
        )));
        let cause = tls(&rustls::Error::InvalidCertificate(ca), "h");
        assert!(
            cause.detail.contains("CA certificate as its own"),
            "{cause:?}"
        );
        assert!(!cause.to_string().contains("OtherError"));
    }

    use CertificateError as C;
}
