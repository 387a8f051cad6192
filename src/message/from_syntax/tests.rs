use super::*;

#[test]
fn folds_and_controls() {
    assert_eq!(unfold(b"a\r\n b").unwrap(), b"a b");
    assert_eq!(unfold(b"a\r\nb"), Err(FromSyntax::Control));
    assert_eq!(unfold(b"a\nb"), Err(FromSyntax::Control));
    assert_eq!(unfold(b"a\0b"), Err(FromSyntax::Control));
    assert_eq!(
        read_from(b" Joe\r\n <j@example.com>").unwrap().unquoted(),
        "j@example.com"
    );
}

#[test]
fn comments_nest_and_escape() {
    assert_eq!(
        read_from(b" j@example.com (a (nested) comment \\) still)")
            .unwrap()
            .domain(),
        "example.com"
    );
    assert_eq!(
        read_from(b" j@example.com (x \\@ y)"),
        Err(FromSyntax::AddressInComment)
    );
}
