//! The envelope path reader and the From reader on arbitrary bytes: no panic, and what
//! they accept keeps the invariants the relay relies on. A path that is accepted is
//! written so that our reader and smtp-proto (the server side of the same protocol) both
//! read back exactly that mailbox and no parameter; a From that is accepted has one
//! lower-case DNS domain with a dot.
#![no_main]

use dkim_relay::message::{command_path, from_domain, HeaderBlock, Mailbox, ReversePath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut line = b"MAIL FROM:".to_vec();
    line.extend_from_slice(data);
    line.extend_from_slice(b"\r\n");
    if let Ok(read) = command_path(&line) {
        assert!(read.parameters.is_empty() || read.parameters.starts_with(' '));
        if let ReversePath::Mailbox(mailbox) = &read.path {
            let written = mailbox.to_string();
            assert_eq!(Mailbox::parse(&written).as_ref(), Ok(mailbox));
            assert!(
                !written.contains(['<', '>', '\r', '\n', '\0']),
                "{written:?}"
            );
            let wire = format!("MAIL FROM:<{written}>\r\n");
            let again = command_path(wire.as_bytes()).expect("our own output reads back");
            assert_eq!(again.path, read.path);
            assert!(again.parameters.is_empty());
            match smtp_proto::Request::parse(&mut wire.as_bytes().iter()) {
                Ok(smtp_proto::Request::Mail { from }) => {
                    assert_eq!(from.address.as_ref(), mailbox.unquoted(), "{wire:?}");
                    assert_eq!(from.size, 0);
                    assert!(from.env_id.is_none() && from.auth.is_none() && from.flags == 0);
                }
                other => panic!("smtp-proto read {wire:?} as {other:?}"),
            }
        }
    }

    let mut message = b"From:".to_vec();
    message.extend_from_slice(data);
    message.extend_from_slice(b"\r\n\r\n");
    if let Ok(block) = HeaderBlock::parse(&message) {
        if let Ok(domain) = from_domain(&block) {
            assert!(domain.contains('.'), "{domain}");
            assert_eq!(domain, domain.to_ascii_lowercase());
            assert!(dkim_relay::config::is_dns_name(&domain), "{domain}");
        }
    }
});
