use super::*;

fn parse(input: &[u8]) -> (DataParser, usize) {
    let mut p = DataParser::new(1 << 20, 998, 0);
    let used = p.feed(input);
    (p, used)
}

#[test]
fn ends_on_crlf_dot_crlf_and_leaves_pipelined_bytes() {
    let (p, used) = parse(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    assert!(p.is_done());
    assert_eq!(used, 21);
    assert!(p.taint.is_none());
    assert_eq!(p.into_message(), b"Subject: x\r\n\r\nhi\r\n");
}

#[test]
fn an_empty_message_ends_at_the_first_dot_line() {
    let (p, used) = parse(b".\r\n");
    assert!(p.is_done());
    assert_eq!(used, 3);
    assert!(p.into_message().is_empty());
}

#[test]
fn dot_stuffing_is_undone() {
    let (p, _) = parse(b"a\r\n..b\r\n..\r\n.\r\n");
    assert_eq!(p.into_message(), b"a\r\n.b\r\n.\r\n");
}

#[test]
fn feeding_byte_by_byte_gives_the_same_result() {
    let input = b"a\r\n..b\r\nc\r\n.\r\n";
    let mut p = DataParser::new(1 << 20, 998, 0);
    for b in input.iter() {
        assert!(!p.is_done());
        p.feed(std::slice::from_ref(b));
    }
    assert!(p.is_done());
    assert_eq!(p.into_message(), b"a\r\n.b\r\nc\r\n");
}

/// The end-of-data variants used for SMTP smuggling (CVE-2023-51764 and friends): none of
/// them may end the data, and each taints the message.
#[test]
fn smuggling_end_of_data_variants_do_not_end_the_data() {
    let variants: &[(&[u8], Taint)] = &[
        (b"x\n.\n", Taint::BareLf),
        (b"x\n.\r\n", Taint::BareLf),
        (b"x\r\n.\n", Taint::BareLf),
        (b"x\r.\r", Taint::BareCr),
        (b"x\r.\r\n", Taint::BareCr),
        (b"x\r\n.\r", Taint::BareCr),
        (b"x\r\n\x00.\r\n", Taint::Nul),
    ];
    for (payload, taint) in variants {
        let mut input = b"Subject: s\r\n\r\n".to_vec();
        input.extend_from_slice(payload);
        input.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\n");
        let (p, used) = parse(&input);
        assert!(
            !p.is_done(),
            "{:?} ended the data",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(used, input.len());
        assert_eq!(
            p.taint,
            Some(*taint),
            "{:?}",
            String::from_utf8_lossy(payload)
        );
        // The real end still ends it.
        let mut p = p;
        let used = p.feed(b"\r\n.\r\nNOOP\r\n");
        assert!(p.is_done());
        assert_eq!(used, 5);
    }
}

#[test]
fn oversized_messages_are_read_to_the_end_but_not_stored() {
    let mut p = DataParser::new(10, 998, 0);
    p.feed(b"0123456789abcdef\r\n.\r\n");
    assert!(p.is_done());
    assert!(p.too_big);
    assert_eq!(p.into_message().len(), 10);
}

#[test]
fn lines_over_the_limit_are_flagged() {
    let mut long = vec![b'a'; 999];
    long.extend_from_slice(b"\r\n.\r\n");
    let (p, _) = parse(&long);
    assert!(p.long_line);
    let mut ok = vec![b'a'; 998];
    ok.extend_from_slice(b"\r\n.\r\n");
    assert!(!parse(&ok).0.long_line);
    // The stuffed dot does not count.
    let mut stuffed = vec![b'.'];
    stuffed.extend(vec![b'.'; 998]);
    stuffed.extend_from_slice(b"\r\n.\r\n");
    assert!(!parse(&stuffed).0.long_line);
}

#[test]
fn eight_bit_content_is_noticed() {
    assert!(parse("Subject: é\r\n\r\n.\r\n".as_bytes()).0.eight_bit);
    assert!(!parse(b"Subject: e\r\n\r\n.\r\n").0.eight_bit);
}
