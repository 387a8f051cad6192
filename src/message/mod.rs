//! What the relay needs to know about a message's content: its header fields and the
//! domain of its single From mailbox (DESIGN §4). Used by the SMTP stage at end of DATA
//! and by the signer.

mod address;
mod from;
mod headers;
mod mailbox;

pub use address::{command_path, CommandPath, Mailbox, PathError, ReversePath};
pub use from::{from_domain, FromError};
pub use headers::{HeaderBlock, HeaderError, HeaderField};
pub use mailbox::FromSyntax;
mod date;
pub use date::rfc5322_date;
