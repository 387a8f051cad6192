//! Splitting a message (CRLF line endings, as the SMTP stage guarantees) into header
//! fields and body.

/// One header field: the name as written and the raw value (after the colon, folding
/// CRLFs included, final CRLF excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderBlock<'a> {
    pub fields: Vec<HeaderField<'a>>,
    /// Offset of the first body byte (after the empty line), or the message length.
    pub body_offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header line {0} is neither a field (name: value) nor a continuation")]
    Malformed(usize),
    #[error("the message has no header fields")]
    Empty,
}

impl<'a> HeaderBlock<'a> {
    pub fn parse(message: &'a [u8]) -> Result<HeaderBlock<'a>, HeaderError> {
        let mut fields: Vec<HeaderField<'a>> = Vec::new();
        // (name, value start, end of the field's last line) of the field being collected.
        let mut current: Option<(&'a [u8], usize, usize)> = None;
        let mut pos = 0;
        let mut line_no = 0;
        let body_offset = loop {
            let line_end = find_crlf(&message[pos..]).map_or(message.len(), |i| pos + i);
            let line = &message[pos..line_end];
            line_no += 1;
            if line.is_empty() {
                break (line_end + 2).min(message.len());
            }
            if line[0] == b' ' || line[0] == b'\t' {
                match current.as_mut() {
                    Some((_, _, end)) => *end = line_end,
                    None => return Err(HeaderError::Malformed(line_no)),
                }
            } else {
                if let Some((name, vs, end)) = current.take() {
                    fields.push(HeaderField {
                        name,
                        value: &message[vs..end],
                    });
                }
                let colon = line
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or(HeaderError::Malformed(line_no))?;
                // RFC 5322 §3.6.8: printable US-ASCII except colon; a space before the
                // colon (obsolete syntax) is trimmed.
                let name = line[..colon].trim_ascii_end();
                if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
                    return Err(HeaderError::Malformed(line_no));
                }
                current = Some((name, pos + colon + 1, line_end));
            }
            if line_end >= message.len() {
                break message.len();
            }
            pos = line_end + 2;
        };
        if let Some((name, vs, end)) = current {
            fields.push(HeaderField {
                name,
                value: &message[vs..end],
            });
        }
        if fields.is_empty() {
            return Err(HeaderError::Empty);
        }
        Ok(HeaderBlock {
            fields,
            body_offset,
        })
    }

    /// Fields with this name, case-insensitively.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s HeaderField<'a>> + 's {
        self.fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name.as_bytes()))
    }

    pub fn names(&self) -> Vec<&'a [u8]> {
        self.fields.iter().map(|f| f.name).collect()
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

impl HeaderField<'_> {
    /// The value unfolded (CRLF before whitespace removed) and trimmed, lossily as UTF-8.
    pub fn unfolded(&self) -> String {
        let text = String::from_utf8_lossy(self.value);
        text.replace("\r\n", "").trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_folding_are_split() {
        let msg = b"From: a@b.example\r\nSubject: one\r\n two\r\nTo: c@d.example\r\n\r\nbody\r\n";
        let block = HeaderBlock::parse(msg).unwrap();
        assert_eq!(block.fields.len(), 3);
        assert_eq!(block.fields[1].name, b"Subject");
        assert_eq!(block.fields[1].value, b" one\r\n two");
        assert_eq!(block.fields[1].unfolded(), "one two");
        assert_eq!(block.fields[2].value, b" c@d.example");
        assert_eq!(&msg[block.body_offset..], b"body\r\n");
    }

    #[test]
    fn headers_without_body_are_read_to_the_end() {
        let block = HeaderBlock::parse(b"From: a@b.example\r\nTo: x@y.example\r\n").unwrap();
        assert_eq!(block.fields.len(), 2);
        assert_eq!(block.fields[1].value, b" x@y.example");
        let block = HeaderBlock::parse(b"From: a@b.example").unwrap();
        assert_eq!(block.fields[0].value, b" a@b.example");
    }

    #[test]
    fn a_line_without_colon_is_malformed() {
        assert_eq!(
            HeaderBlock::parse(b"From: a@b.example\r\nnonsense\r\n\r\n"),
            Err(HeaderError::Malformed(2))
        );
        assert_eq!(
            HeaderBlock::parse(b" leading\r\n\r\n"),
            Err(HeaderError::Malformed(1))
        );
        assert_eq!(HeaderBlock::parse(b"\r\nbody"), Err(HeaderError::Empty));
    }

    #[test]
    fn names_are_found_case_insensitively() {
        let block = HeaderBlock::parse(b"FROM: a@b.example\r\nfrom: c@d.example\r\n\r\n").unwrap();
        assert_eq!(block.all("From").count(), 2);
    }
}
