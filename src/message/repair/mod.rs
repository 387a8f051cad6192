//! Making the mail real hosts send sign-safe instead of refusing it (issue 14 item 2):
//! the pure parts, without I/O. The SMTP stage (`smtp/repair.rs`) applies them to the
//! header block at its end and to the body at the end of data, before the spool commit.
//!
//! - `header`: where a header section ends without its empty line; folding lines over
//!   998 octets at whitespace.
//! - `from`: qualifying a bare From or MAIL FROM, replacing a private-namespace From.
//! - `mime`: Content-Type boundary and transfer encoding, read as MIME readers read them.
//! - `body`: the two passes over the body (scan as it arrives, rewrite at the end).
//! - `qp`: quoted-printable, one line at a time.

pub mod body;
pub mod from;
pub mod header;
pub mod mime;
pub mod qp;
