//! Issue 14 item 5: hosts send as themselves. A Postfix host's default sender and cron's
//! are `root@<host name>`; a configured domain signs its subdomains' mail with its own
//! keys (`d=example.com`, aligned under DMARC's relaxed mode) unless it says
//! `subdomains = false`, and authorisation lists say `*.example.com` to allow them.

mod common;

use common::verify::{assert_signed, TxtCache};
use common::*;

async fn send_from(relay: &dkim_relay::relay::RelayHandle, from: &str) -> String {
    let mut client = Client::greeted(relay.smtp_addr()).await;
    client
        .send(
            "root@web01.example.com",
            &["ops@example.net"],
            &message(from, "cron"),
        )
        .await
}

#[tokio::test]
async fn mail_from_a_host_of_the_domain_is_signed_by_the_domain() {
    let (relay, upstream, dir) = relay_with(|_| {}).await;
    let mut events = relay.subscribe();
    for from in ["root@web01.example.com", "cron@db.eu.example.com"] {
        let r = send_from(&relay, from).await;
        assert!(r.starts_with("250"), "{from}: {r}");
    }
    wait_done(&mut events, 2).await;
    let cache = TxtCache::from_store(&dir.path().join("keys"));
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    for message in &received {
        // Both signatures verify, each with d=example.com.
        assert_signed(&message.data, &cache, DOMAIN).await;
    }
    // Only below a configured domain: look-alikes and other names are not signed.
    for from in [
        "root@example.com.evil.test",
        "root@badexample.com",
        "root@web01.example.community",
    ] {
        let r = send_from(&relay, from).await;
        assert!(r.starts_with("550 5.7.1"), "{from}: {r}");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn a_domain_can_refuse_to_sign_for_its_subdomains() {
    let (relay, upstream, _dir) = relay_with(|c| {
        for d in &mut c.domains {
            d.subdomains = false;
        }
    })
    .await;
    let r = send_from(&relay, "root@web01.example.com").await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(upstream.received().is_empty());
    relay.shutdown().await;
}

/// A tenant limited to `example.com` may not use its subdomains; one granted
/// `*.example.com` may use them (and not example.com itself).
#[tokio::test]
async fn authorisation_lists_grant_subdomains_with_a_wildcard() {
    for (list, from, allowed) in [
        (DOMAIN, "root@web01.example.com", false),
        ("*.example.com", "root@web01.example.com", true),
        ("*.example.com", "root@example.com", false),
    ] {
        let (relay, _upstream, _dir) = relay_with(|c| {
            c.smtp.allowed_networks = vec!["10.0.0.0/8".parse().unwrap()];
            c.smtp.senders = vec![dkim_relay::config::SenderPolicyConfig {
                networks: vec!["127.0.0.0/8".parse().unwrap()],
                from_domains: vec![list.into()],
            }];
        })
        .await;
        let mut client = Client::greeted(relay.smtp_addr()).await;
        let r = client
            .send("", &["ops@example.net"], &message(from, "tenant"))
            .await;
        assert_eq!(r.starts_with("250"), allowed, "{list} / {from}: {r}");
        relay.shutdown().await;
    }
}
