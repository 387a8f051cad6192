//! A key file whose mode changes while the relay runs: made group-readable, it stops
//! signing at the next key-ring reload; fixed back to 0600, it signs again. No restart.

mod common;

use common::*;
use dkim_relay::delivery::DeliveryEvent;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use tokio::sync::broadcast;

/// The next Done or Deferred event of message `id`, or None after 15 s.
async fn outcome(
    events: &mut broadcast::Receiver<DeliveryEvent>,
    id: &str,
) -> Option<DeliveryEvent> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e @ DeliveryEvent::Done { .. }) | Ok(e @ DeliveryEvent::Deferred { .. }) if matches!(&e, DeliveryEvent::Done { id: d } | DeliveryEvent::Deferred { id: d, .. } if d.as_str() == id) => {
                    return e
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("relay stopped"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .ok()
}

async fn send(addr: std::net::SocketAddr) -> String {
    let mut client = Client::greeted(addr).await;
    let r = client
        .send(
            "a@host",
            &["u@example.net"],
            &message("a@example.com", "mode"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    r.rsplit(' ').next().unwrap().to_string()
}

#[tokio::test]
async fn a_key_made_readable_stops_signing_and_a_fixed_one_signs_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), None);
    let keys_dir = config.keys.dir.clone();
    let mut relay = start(config).await;
    relay.watch(None).unwrap();
    let mut events = relay.subscribe();
    let addr = relay.smtp_addr();
    let id = send(addr).await;
    assert!(matches!(
        outcome(&mut events, &id).await,
        Some(DeliveryEvent::Done { .. })
    ));

    let rsa_key = std::fs::read_dir(keys_dir.join("example.com"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "pem")
                && p.file_name().unwrap().to_string_lossy().starts_with('s')
        })
        .expect("an RSA key file");
    let chmod =
        |mode| std::fs::set_permissions(&rsa_key, std::fs::Permissions::from_mode(mode)).unwrap();

    // The reload after the chmod is asynchronous: send until a message is deferred.
    chmod(0o640);
    let mut deferred = None;
    for _ in 0..150 {
        let id = send(addr).await;
        match outcome(&mut events, &id).await {
            Some(DeliveryEvent::Deferred { cause, .. }) => {
                deferred = Some((id, cause.to_string()));
                break;
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            None => panic!("no outcome for {id}"),
        }
    }
    let (id, reason) = deferred.expect("a group-readable key still signs after the reload");
    assert!(reason.contains("0600"), "{reason}");

    // Fixed back: the reload picks the key up again and the waiting message goes out.
    chmod(0o600);
    assert!(
        matches!(
            outcome(&mut events, &id).await,
            Some(DeliveryEvent::Done { .. })
        ),
        "the key fixed back to 0600 is not used again"
    );
    relay.shutdown().await;
}
