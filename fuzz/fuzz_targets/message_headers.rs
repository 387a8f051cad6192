//! The header splitter and the From parser on arbitrary bytes: no panic, and every
//! result keeps the invariants the signer and the policy rely on.
#![no_main]

use dkim_relay::message::{from_domain, HeaderBlock};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(block) = HeaderBlock::parse(data) else {
        return;
    };
    assert!(block.body_offset <= data.len());
    assert!(!block.fields.is_empty());
    let range = data.as_ptr_range();
    for field in &block.fields {
        // Names and values are slices of the message itself, inside the header block.
        assert!(range.contains(&field.name.as_ptr()) || field.name.is_empty());
        assert!(!field.name.is_empty());
        assert!(field
            .name
            .iter()
            .all(|&b| (33..=126).contains(&b) && b != b':'));
        let _ = field.unfolded();
    }
    if let Ok(domain) = from_domain(&block) {
        assert!(domain.contains('.'), "{domain}");
        assert_eq!(domain, domain.to_ascii_lowercase());
        assert!(dkim_relay::config::is_dns_name(&domain), "{domain}");
    }
});
