//! What the crash tests (crash_safety, crash_per_connection) read back from a relay
//! they killed: which message a delivery was, and what is still in the spool.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The test tag a message carries in its Subject.
pub fn tag_of(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .map(str::to_string)
}

/// The queue id in the relay's Received field.
pub fn queue_id_of(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let after = text.split("with ESMTP id ").nth(1)?;
    Some(after.split(';').next()?.trim().to_string())
}

/// The queue ids of the messages in the spool (asked of the spool, not its file layout).
pub fn spooled_ids(spool: &Path) -> HashSet<String> {
    super::spooled_ids(spool)
}

/// Polls `done` until it holds (a process outside the test changes what it reads).
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
