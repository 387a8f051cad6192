//! Issue 14 items 2 and 5 over real SMTP: what real hosts send is made sign-safe before
//! the spool commit instead of refused — long lines re-encoded as quoted-printable, a
//! missing empty line added, a body-only message given a From, a long header line
//! folded, bare sender names qualified with the network's `qualify_domain`, and a
//! private-namespace From rewritten — and what cannot be repaired is refused with a
//! reply that names the problem and the fix. Every delivered message is verified.

mod common;

use common::verify::{assert_signed, TxtCache};
use common::*;
use dkim_relay::config::{Config, OriginConfig};

fn origin(qualify: Option<&str>, private: &[&str], rewrite: Option<&str>) -> OriginConfig {
    OriginConfig {
        networks: vec!["127.0.0.0/8".parse().unwrap()],
        qualify_domain: qualify.map(str::to_string),
        private_domains: private.iter().map(|d| d.to_string()).collect(),
        rewrite_from: rewrite.map(str::to_string),
    }
}

/// Sends each message; returns the replies and what the upstream got (signatures checked).
async fn run(
    tune: impl FnOnce(&mut Config),
    mail_from: &str,
    messages: &[String],
) -> (Vec<String>, Vec<Vec<u8>>) {
    let (relay, upstream, dir) = relay_with(tune).await;
    let mut events = relay.subscribe();
    let mut replies = Vec::new();
    for m in messages {
        let mut client = Client::greeted(relay.smtp_addr()).await;
        replies.push(client.send(mail_from, &["ops@example.net"], m).await);
    }
    let accepted = replies.iter().filter(|r| r.starts_with("250")).count();
    wait_done(&mut events, accepted).await;
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    let mut delivered = Vec::new();
    for r in upstream.received() {
        assert_signed(&r.data, &cache, DOMAIN).await;
        delivered.push(r.data);
    }
    relay.shutdown().await;
    (replies, delivered)
}

fn max_line(data: &[u8]) -> usize {
    data.split(|&b| b == b'\n')
        .map(|l| l.len().saturating_sub(1))
        .max()
        .unwrap_or(0)
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The delivered message that contains `marker`: two messages may be delivered in either
/// order (each delivery worker takes its own upstream connection).
fn with(delivered: &[Vec<u8>], marker: &str) -> String {
    let found: Vec<String> = delivered
        .iter()
        .map(|d| text(d))
        .filter(|d| d.contains(marker))
        .collect();
    assert_eq!(found.len(), 1, "one delivered message with {marker:?}");
    found.into_iter().next().unwrap_or_default()
}

const HEAD: &str = "From: Cron <cron@example.com>\r\nTo: ops@example.net\r\nSubject: report\r\n\
                    Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <r@test>\r\n";

#[tokio::test]
async fn a_long_line_is_reencoded_as_quoted_printable_and_signed() {
    let line = "0123456789 ".repeat(182); // 2,002 octets
    let single = format!("{HEAD}\r\nfirst a=b\r\n{line}\r\n");
    let multi = format!(
        "{HEAD}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=_b\"\r\n\r\n\
         --=_b\r\nContent-Type: text/plain\r\n\r\nshort part\r\n\
         --=_b\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{line}\r\n\
         --=_b--\r\n"
    );
    let (replies, delivered) = run(|_| {}, "cron@example.com", &[single, multi]).await;
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    assert_eq!(delivered.len(), 2);
    for d in &delivered {
        assert!(max_line(d) <= 998, "a line over 998 left");
        assert!(text(d).contains("Content-Transfer-Encoding: quoted-printable\r\n"));
    }
    let single = with(&delivered, "first a=");
    assert!(single.contains("MIME-Version: 1.0\r\n"));
    assert!(single.contains("first a=3Db\r\n"));
    let multi = with(&delivered, "short part");
    assert!(
        multi.contains("\r\n\r\nshort part\r\n--=_b\r\n"),
        "the other part is untouched"
    );
    assert!(!multi.contains("7bit"));
}

#[tokio::test]
async fn a_long_line_under_a_senders_signature_is_refused_with_the_fix() {
    let signed = format!(
        "{HEAD}MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pgp-signature\"; boundary=s\r\n\r\n\
         --s\r\nContent-Type: text/plain\r\n\r\n{}\r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\nsig\r\n--s--\r\n",
        "x".repeat(2000)
    );
    let (replies, delivered) = run(|_| {}, "cron@example.com", &[signed]).await;
    assert!(replies[0].starts_with("554 5.6.0"), "{replies:?}");
    assert!(replies[0].contains("multipart/signed"), "{}", replies[0]);
    assert!(
        replies[0].contains("quoted-printable or base64"),
        "{}",
        replies[0]
    );
    assert!(delivered.is_empty());
}

#[tokio::test]
async fn a_header_block_without_its_empty_line_and_a_body_only_message_are_delivered() {
    let no_blank = format!("{HEAD}this line starts the body\r\nsecond line\r\n");
    let body_only = "just some text from a script\r\nand more\r\n".to_string();
    let (replies, delivered) = run(|_| {}, "script@example.com", &[no_blank, body_only]).await;
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    assert!(with(&delivered, "this line")
        .contains("Message-ID: <r@test>\r\n\r\nthis line starts the body\r\n"));
    let b = with(&delivered, "just some text");
    assert!(b.contains("From: script@example.com\r\n"), "{b}");
    assert!(
        b.contains("\r\n\r\njust some text from a script\r\nand more\r\n"),
        "{b}"
    );
}

#[tokio::test]
async fn a_body_only_message_with_the_null_sender_is_refused_with_the_fix() {
    let (replies, _) = run(|_| {}, "", &["only text\r\n".to_string()]).await;
    assert!(replies[0].starts_with("550 5.6.0"), "{replies:?}");
    assert!(
        replies[0].contains("add a From: header field"),
        "{}",
        replies[0]
    );
}

#[tokio::test]
async fn a_header_line_of_1500_octets_is_folded() {
    let to: Vec<String> = (0..90).map(|i| format!("user{i:02}@example.net")).collect();
    let long = format!("To: {}\r\n", to.join(", "));
    assert!(long.len() > 1500);
    let m = format!(
        "From: Cron <cron@example.com>\r\n{long}Subject: x\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <h@test>\r\n\r\nbody\r\n"
    );
    let unfoldable = format!("{HEAD}X-Token: {}\r\n\r\nbody\r\n", "a".repeat(1500));
    let (replies, delivered) = run(|_| {}, "cron@example.com", &[m, unfoldable]).await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(max_line(&delivered[0]) <= 998);
    assert!(text(&delivered[0]).contains("user89@example.net"));
    assert!(
        replies[1].starts_with("550 5.6.0") && replies[1].contains("no space to fold"),
        "{replies:?}"
    );
}

#[tokio::test]
async fn crons_from_is_qualified_with_the_networks_domain_or_refused_naming_it() {
    let cron = "From: root (Cron Daemon)\r\nTo: root\r\nSubject: Cron <root@web01> run-parts\r\n\r\noutput\r\n"
        .to_string();
    let (replies, _) = run(|_| {}, "cron@example.com", std::slice::from_ref(&cron)).await;
    assert!(replies[0].starts_with("550 5.6.0"), "{replies:?}");
    assert!(replies[0].contains("qualify_domain"), "{}", replies[0]);

    let (replies, delivered) = run(
        |c| c.smtp.origins = vec![origin(Some(DOMAIN), &[], None)],
        "cron@example.com",
        &[cron],
    )
    .await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(text(&delivered[0]).contains("From: root@example.com (Cron Daemon)\r\n"));
}

#[tokio::test]
async fn a_bare_mail_from_is_qualified_or_refused_naming_the_fix() {
    let m = message("root@example.com", "bare");
    let (replies, _) = run(|_| {}, "root", std::slice::from_ref(&m)).await;
    assert!(replies[0].starts_with("553 5.1.7"), "{replies:?}");
    assert!(replies[0].contains("qualify_domain"), "{}", replies[0]);
    // `user@host` without a dot is relayed as before when nothing says how to qualify it
    // (Postfix accepts it too); with qualify_domain it is qualified like a bare name.
    let (replies, _) = run(|_| {}, "root@localhost", std::slice::from_ref(&m)).await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    let (relay, upstream, _dir) =
        relay_with(|c| c.smtp.origins = vec![origin(Some(DOMAIN), &[], None)]).await;
    let mut events = relay.subscribe();
    for sender in ["root", "root@localhost"] {
        let mut client = Client::greeted(relay.smtp_addr()).await;
        let r = client.send(sender, &["ops@example.net"], &m).await;
        assert!(r.starts_with("250"), "{r}");
    }
    wait_done(&mut events, 2).await;
    for got in upstream.received() {
        assert_eq!(got.mail_from, "root@example.com");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn a_private_namespace_from_is_rewritten_and_kept_in_reply_to() {
    let m = message("root@web01.corp.internal", "private");
    let (replies, delivered) = run(
        |c| {
            c.smtp.origins = vec![origin(
                None,
                &["corp.internal"],
                Some("servers@example.com"),
            )]
        },
        "servers@example.com",
        &[m],
    )
    .await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    let d = text(&delivered[0]);
    assert!(d.contains("From: Sender <servers@example.com>\r\n"), "{d}");
    assert!(d.contains("Reply-To: root@web01.corp.internal\r\n"), "{d}");
}

/// Past the in-memory hold (64 KiB) the body streams into the spool file as before: a
/// large clean message arrives byte for byte, and a large one with a long line is refused
/// naming the fix (the spool has no read-back to rewrite it file to file).
#[tokio::test]
async fn a_large_body_streams_as_before_and_a_long_line_in_it_is_refused_with_the_fix() {
    let filler: String = (0..4000)
        .map(|i| format!("line {i} of the report\r\n"))
        .collect();
    assert!(filler.len() > 64 * 1024);
    let clean = format!("{HEAD}\r\n{filler}");
    let long = format!("{HEAD}\r\n{filler}{}\r\n", "y".repeat(5000));
    let (replies, delivered) = run(|_| {}, "cron@example.com", &[clean, long]).await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    let d0 = text(&delivered[0]);
    assert!(
        d0.ends_with(&filler),
        "the clean body is stored as received"
    );
    assert!(replies[1].starts_with("554 5.6.0"), "{replies:?}");
    assert!(
        replies[1].contains("over 64 KiB") && replies[1].contains("quoted-printable"),
        "{}",
        replies[1]
    );
    assert_eq!(delivered.len(), 1);
}
