//! What the relay needs to know about a message's content: its header fields and the
//! domain of its single From mailbox, and the fields it may carry only once (DESIGN §4).
//! Used by the SMTP stage at end of DATA and by the signer. Also the envelope address
//! type ([`Mailbox`]), since both read the same local-part@domain syntax: the SMTP stage
//! reads it, the delivery stage writes it.

pub(crate) mod address;
mod from;
mod from_syntax;
mod headers;
pub mod repair;
mod unique;

pub use address::{command_path, CommandPath, Mailbox, PathError, ReversePath};
pub use from::{from_domain, FromError};
pub use from_syntax::FromSyntax;
pub use headers::{HeaderBlock, HeaderError, HeaderField};
pub use unique::{merge_address_lists, repeated_field, Merged, AT_MOST_ONCE, MERGED};
mod date;
pub mod encoded_words;
pub mod transport_form;
pub use date::rfc5322_date;
