//! The segment log through the Spool's API: recovery from a torn tail and from damage,
//! done marks across restarts, deletion of delivered segments, group commit, and readers
//! attached while a relay appends.

use super::tests::{envelope_to, names};
use super::*;

fn envelope(id: &str, message: &[u8]) -> Envelope {
    envelope_to(id, message, &["a@example.net"])
}

fn id(s: &str) -> QueueId {
    QueueId::try_from(s.to_string()).unwrap()
}

/// Stores messages `ids` (each its id as body) and returns the spool.
fn spool_with(dir: &Path, ids: &[&str]) -> Spool {
    let spool = Spool::open(dir, true).unwrap();
    for i in ids {
        let body = format!("From: a@example.com\r\n\r\nmessage {i}\r\n");
        spool
            .store(&envelope(i, body.as_bytes()), body.as_bytes())
            .unwrap();
    }
    spool
}

fn loaded_ids(spool: &Spool) -> Vec<String> {
    let mut ids: Vec<String> = spool
        .load_all()
        .unwrap()
        .into_iter()
        .map(|m| m.envelope.id.to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_torn_tail_is_dropped_and_never_appended_after() {
    let dir = tempfile::tempdir().unwrap();
    drop(spool_with(dir.path(), &["ba01", "ba02", "ba03"]));
    let seg = dir.path().join("queue/segment-0.log");
    let len = std::fs::metadata(&seg).unwrap().len();
    // The last record's write cut short by a crash.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let spool = spool_with(dir.path(), &["ba04"]);
    assert_eq!(loaded_ids(&spool), ["ba01", "ba02", "ba04"]);
    // The new message went into a new segment; the torn one is as the crash left it.
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len - 7);
    assert!(dir.path().join("queue/segment-1.log").exists());
    assert!(names(&dir.path().join("corrupt")).is_empty());
    assert_eq!(
        spool.read(&id("ba04")).unwrap().message(),
        b"From: a@example.com\r\n\r\nmessage ba04\r\n"
    );
}

#[test]
fn a_damaged_record_in_the_middle_is_set_aside_once_and_the_rest_loaded() {
    let dir = tempfile::tempdir().unwrap();
    drop(spool_with(dir.path(), &["bb01", "bb02", "bb03"]));
    let seg = dir.path().join("queue/segment-0.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(4).position(|w| w == b"bb02").unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();

    let spool = Spool::open(dir.path(), true).unwrap();
    assert_eq!(loaded_ids(&spool), ["bb01", "bb03"]);
    let corrupt = names(&dir.path().join("corrupt"));
    assert_eq!(corrupt.len(), 1, "{corrupt:?}");
    let kept = std::fs::read(dir.path().join("corrupt").join(&corrupt[0])).unwrap();
    assert!(
        kept.windows(4).any(|w| w == b"Bb02"),
        "the damaged record is kept"
    );
    drop(spool);
    // Marked done: the next start neither loads it nor sets it aside again.
    std::fs::remove_file(dir.path().join("corrupt").join(&corrupt[0])).unwrap();
    let spool = Spool::open(dir.path(), true).unwrap();
    assert_eq!(loaded_ids(&spool), ["bb01", "bb03"]);
    assert!(names(&dir.path().join("corrupt")).is_empty());
}

#[test]
fn done_marks_survive_a_restart_and_a_removed_message_is_not_loaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), &["bc01", "bc02", "bc03"]);
    spool.remove(&id("bc02")).unwrap();
    assert!(spool.read(&id("bc02")).is_err());
    drop(spool);
    let spool = Spool::open(dir.path(), true).unwrap();
    assert_eq!(loaded_ids(&spool), ["bc01", "bc03"]);
    assert!(spool.read(&id("bc02")).is_err());
    // A removal after the restart lands in the old segment's marks, not the new one's.
    spool.remove(&id("bc01")).unwrap();
    spool_with_more(&spool, &["bc04"]);
    drop(spool);
    let spool = Spool::open(dir.path(), true).unwrap();
    assert_eq!(loaded_ids(&spool), ["bc03", "bc04"]);
}

fn spool_with_more(spool: &Spool, ids: &[&str]) {
    for i in ids {
        spool.store(&envelope(i, b"x"), b"x").unwrap();
    }
}

#[test]
fn a_segment_is_deleted_once_its_messages_are_delivered_unless_it_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let spool = spool_with(dir.path(), &["bd01", "bd02"]);
    spool.remove(&id("bd01")).unwrap();
    spool.remove(&id("bd02")).unwrap();
    // Still appended to: kept (creating a segment per message would undo the point).
    assert_eq!(names(&queue), ["segment-0.done", "segment-0.log"]);
    spool_with_more(&spool, &["bd03"]);
    drop(spool);
    // After a restart segment 0 is old: delivering its last message deletes it.
    let spool = Spool::open(dir.path(), true).unwrap();
    spool_with_more(&spool, &["bd04"]);
    assert!(queue.join("segment-0.log").exists());
    spool.remove(&id("bd03")).unwrap();
    assert_eq!(names(&queue), ["segment-1.log"]);
    // A start with nothing left in a segment deletes it at once.
    spool.remove(&id("bd04")).unwrap();
    drop(spool);
    let spool = Spool::open(dir.path(), true).unwrap();
    assert!(names(&queue).is_empty(), "{:?}", names(&queue));
    assert!(spool.load_all().unwrap().is_empty());
}

#[test]
fn a_full_segment_rotates_and_is_deleted_when_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let spool = Spool::open(dir.path(), false).unwrap();
    let body = vec![b'r'; incoming::HOLD - 100];
    let mut stored = Vec::new();
    for i in 0.. {
        let env = envelope(&format!("be{i:04}"), &body);
        spool.store(&env, &body).unwrap();
        stored.push(env.id);
        if queue.join("segment-1.log").exists() {
            break;
        }
    }
    assert!(
        std::fs::metadata(queue.join("segment-0.log"))
            .unwrap()
            .len()
            <= segment::ROTATE_AT
    );
    let last = stored.pop().unwrap();
    for id in &stored {
        spool.remove(id).unwrap();
    }
    assert_eq!(names(&queue), ["segment-1.log"]);
    assert_eq!(spool.read(&last).unwrap().message(), &body[..]);
}

#[test]
fn concurrent_commits_share_fdatasyncs_and_all_return() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), true).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let spool = &spool;
            s.spawn(move || {
                for i in 0..25 {
                    spool_with_more(spool, &[&format!("bf{t}x{i:02}")]);
                }
            });
        }
    });
    let (syncs, commits) = spool.segment_sync_counts();
    assert_eq!(commits, 200);
    assert!((1..=200).contains(&syncs), "{syncs}");
    assert_eq!(spool.dir_sync_counts(), (0, 0));
    drop(spool);
    assert_eq!(
        Spool::open(dir.path(), true)
            .unwrap()
            .load_all()
            .unwrap()
            .len(),
        200
    );
}

#[test]
fn an_attached_reader_finds_a_message_in_a_segment_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = spool_with(dir.path(), &["bg01"]);
    let attached = Spool::attach(dir.path(), false);
    assert!(attached.read(&id("bg02")).is_err());
    // It sees what the relay appends after it attached.
    relay.store(&envelope("bg02", b"y"), b"y").unwrap();
    assert_eq!(attached.read(&id("bg02")).unwrap().message(), b"y");
    let seg = dir.path().join("queue/segment-0.log");
    // A relay in the middle of its next append: a partial record at the end.
    let mut file = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut file, b"DKR1\x40\x00").unwrap();
    let before = (
        names(&dir.path().join("queue")),
        std::fs::read(&seg).unwrap(),
    );

    assert_eq!(
        attached.read(&id("bg01")).unwrap().message(),
        b"From: a@example.com\r\n\r\nmessage bg01\r\n"
    );
    assert_eq!(loaded_ids(&attached), ["bg01", "bg02"]);
    let after = (
        names(&dir.path().join("queue")),
        std::fs::read(&seg).unwrap(),
    );
    assert_eq!(before, after, "the attached reader changed the queue");
    assert!(names(&dir.path().join("corrupt")).is_empty());
}

#[test]
fn a_full_disk_refuses_a_segment_commit_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), &["bh01"]);
    let seg = dir.path().join("queue/segment-0.log");
    let len = std::fs::metadata(&seg).unwrap().len();
    spool.disk_full_switch().set(true);
    let err = spool.store(&envelope("bh02", b"x"), b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    spool.disk_full_switch().set(false);
    assert_eq!(loaded_ids(&spool), ["bh01"]);
}

#[test]
fn queued_ids_count_messages_in_segments_and_in_files() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(dir.path(), &["bi01", "bi02"]);
    let big = vec![b'z'; incoming::HOLD + 1];
    spool.store(&envelope("bi03", &big), &big).unwrap();
    spool.remove(&id("bi01")).unwrap();
    let mut ids: Vec<String> = spool
        .queued_ids()
        .unwrap()
        .into_iter()
        .map(|i| i.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["bi02", "bi03"]);
}

#[test]
fn a_segment_that_cannot_be_read_is_skipped_and_the_rest_loaded() {
    let dir = tempfile::tempdir().unwrap();
    drop(spool_with(dir.path(), &["bj01"]));
    let outside = dir.path().join("elsewhere.log");
    std::fs::write(&outside, b"not the relay's").unwrap();
    // A symlink planted as a segment is not followed, and does not stop the start.
    std::os::unix::fs::symlink(&outside, dir.path().join("queue/segment-7.log")).unwrap();
    let spool = spool_with(dir.path(), &["bj02"]);
    assert_eq!(loaded_ids(&spool), ["bj01", "bj02"]);
    // New segments are numbered past it.
    assert!(dir.path().join("queue/segment-8.log").exists());
}
