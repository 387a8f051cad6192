//! The queue runner's schedule on tokio's paused clock (issue 13): a message that cannot be
//! signed (its domain has no key) is retried at the doubling delays, warned about once at
//! `delay_warning`, and expired at `max_lifetime` with a bounce, and the test takes
//! milliseconds. The runner reads `now` from the `Clock` it is given, so no spool file is
//! made to look old and nothing sleeps.

mod common;

use common::{config, domain, message};
use dkim_relay::clock::Clock;
use dkim_relay::config::{HumanDuration, LiveConfig};
use dkim_relay::delivery::{
    self, DeliveryContext, DeliveryEvent, Fault, Outbox, SharedTransport, Transport,
};
use dkim_relay::dkim::{KeyRing, SharedKeyRing};
use dkim_relay::keys::KeyStore;
use dkim_relay::spool::{Envelope, Origin, QueueId, Spool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

#[tokio::test(start_paused = true)]
async fn retries_double_then_a_delay_warning_then_expiry_on_paused_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.domains = vec![domain("nokeys.example")];
    config.delivery.retry_initial = HumanDuration(Duration::from_secs(60));
    config.delivery.retry_max = HumanDuration(Duration::from_secs(3600));
    config.delivery.max_lifetime = HumanDuration(Duration::from_secs(5 * 3600));
    config.delivery.delay_warning = Some(HumanDuration(Duration::from_secs(2 * 3600)));
    let base = 1_800_000_000; // any fixed Unix time: the clock starts here
    let clock = Clock::tokio_from(base);

    let spool = Spool::open(&config.spool.dir, false).unwrap();
    let body = message("app@nokeys.example", "waits").into_bytes();
    let envelope = Envelope {
        id: QueueId::generate(std::time::SystemTime::now()),
        received: base,
        client: "127.0.0.1".parse().unwrap(),
        helo: "client.test".into(),
        mail_from: "app@nokeys.example".into(),
        rcpts: vec!["u@example.net".into()],
        from_domain: "nokeys.example".into(),
        size: body.len() as u64,
        eight_bit: false,
        origin: Origin::Client,
        utf8: Default::default(),
    };
    spool.store(&envelope, &body).unwrap();
    let id = envelope.id.clone();

    let store = KeyStore::new(&config.keys.dir); // empty: nothing can be signed
    let keys = Arc::new(SharedKeyRing::new(KeyRing::load(&store, &config)));
    let outbox = Outbox::open(&config.delivery.outbox_dir, false).unwrap();
    let (events, mut rx) = tokio::sync::broadcast::channel(256);
    let ctx = Arc::new(DeliveryContext {
        spool: spool.clone(),
        keys,
        dns: Arc::new(dkim_relay::keys::DnsSeen::default()),
        transport: Arc::new(SharedTransport::new(Transport::Outbox(outbox))),
        live: Arc::new(LiveConfig::new(config)),
        events,
        clock,
    });
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let initial = spool.load_all().unwrap();
    let (_queue, _runner) = delivery::start(ctx, 2, initial, stop);

    let at = || clock.now_unix() - base;
    let (mut deferred, mut bounces, mut failed) = (Vec::new(), Vec::new(), None);
    while failed.is_none() {
        let event = match tokio::time::timeout(Duration::from_secs(86_400), rx.recv()).await {
            Ok(Ok(event)) => event,
            Ok(Err(RecvError::Lagged(n))) => panic!("missed {n} events"),
            other => panic!("the runner stopped or went quiet for a day: {other:?}"),
        };
        match event {
            DeliveryEvent::Deferred { id: d, cause } if d == id => {
                assert_eq!(cause.fault, Fault::Relay, "no key is the relay's fault");
                deferred.push(at());
            }
            DeliveryEvent::BounceQueued { id: b, .. } if b == id => bounces.push(at()),
            DeliveryEvent::Failed { id: f, cause, .. } if f == id => {
                failed = Some((at(), cause.fault))
            }
            _ => {}
        }
    }
    // 1m doubling to the 1h cap; the last retry is moved to the deadline.
    assert_eq!(
        deferred,
        [0, 60, 180, 420, 900, 1860, 3780, 7380, 10980, 14580]
    );
    assert_eq!(failed, Some((18_000, Fault::Expired)));
    // One delay warning, at the first deferral past two hours, then the failure DSN.
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        while bounces.len() < 2 {
            if let Ok(DeliveryEvent::BounceQueued { id: b, .. }) = rx.recv().await {
                if b == id {
                    bounces.push(at());
                }
            }
        }
    })
    .await;
    assert!(done.is_ok(), "bounces so far: {bounces:?}");
    assert_eq!(bounces, [7380, 18_000]);
}
