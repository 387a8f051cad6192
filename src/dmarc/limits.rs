//! The bounds on what an import reads, each with the reason for its size. Real reports are
//! small: Google's for a domain sending a million messages a day is a few hundred KB
//! unpacked. The bounds are a hundred times that, so only hostile or broken input meets them.

/// Bounds for one import. [`Limits::default`] is what `dmarc import` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read from one file or standard input before decompression (a report mail,
    /// a `.zip`, a `.gz`); an mbox is read message by message, each within this.
    pub max_input: u64,
    /// Bytes of XML after decompression: a zip or gzip bomb stops here, however small it is.
    pub max_xml: u64,
    /// `<record>` elements in one report.
    pub max_records: usize,
    /// Element nesting (reports nest 4 deep).
    pub max_depth: usize,
    /// Bytes of text in one element (a domain name is at most 253).
    pub max_text: usize,
    /// Reports taken from one archive or one mail (receivers send one).
    pub max_reports_per_container: usize,
    /// Bytes the disk holding the store must keep free after a report is written.
    pub min_free_disk: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input: 32 << 20,
            max_xml: 64 << 20,
            max_records: 100_000,
            max_depth: 16,
            max_text: 1024,
            max_reports_per_container: 16,
            min_free_disk: 256 << 20,
        }
    }
}
