use super::*;
use std::time::{Duration, UNIX_EPOCH};

fn envelope(id: &str, message: &[u8]) -> Envelope {
    envelope_to(id, message, &["a@example.net", "b@example.net"])
}

/// An envelope for `message` to `rcpts` (segment_tests.rs uses it too).
pub(super) fn envelope_to(id: &str, message: &[u8], rcpts: &[&str]) -> Envelope {
    Envelope {
        id: QueueId::try_from(id.to_string()).unwrap(),
        received: 1_700_000_000,
        client: "127.0.0.1".parse().unwrap(),
        helo: "host.internal".into(),
        mail_from: "cron@example.com".into(),
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        from_domain: "example.com".into(),
        size: message.len() as u64,
        eight_bit: false,
        origin: Origin::Client,
        utf8: Default::default(),
    }
}

#[test]
fn a_stored_message_reads_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), true).unwrap();
    let message = b"From: a@example.com\r\n\r\nhello\r\n";
    let env = envelope("aa01", message);
    spool.store(&env, message).unwrap();
    assert_eq!(spool.read(&env.id).unwrap().message(), message);
    let loaded = spool.load_all().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].envelope, env);
    assert_eq!(loaded[0].state, DeliveryState::new(&env));
}

#[test]
fn delivery_state_survives_and_removal_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), false).unwrap();
    let env = envelope("aa02", b"x");
    spool.store(&env, b"x").unwrap();
    let mut state = DeliveryState::new(&env);
    state.attempts = 2;
    state.rcpts[0] = RcptStatus::Delivered;
    spool.save_state(&env.id, &state).unwrap();
    assert_eq!(spool.load_all().unwrap()[0].state, state);
    spool.remove(&env.id).unwrap();
    assert!(spool.load_all().unwrap().is_empty());
    // The message is marked done in its segment (still the current one); the state file
    // is gone.
    assert_eq!(
        names(spool.queue_dir()),
        vec!["segment-0.done".to_string(), "segment-0.log".to_string()]
    );
}

#[test]
fn damaged_files_are_moved_aside_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), false).unwrap();
    let good = envelope("aa03", b"good");
    spool.store(&good, b"good").unwrap();
    // Larger than the segment log takes: a file of its own.
    let big = vec![b'm'; incoming::HOLD + 1];
    let bad = envelope("aa04", &big);
    spool.store(&bad, &big).unwrap();
    let path = spool.queue_dir().join("aa04.msg");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    std::fs::write(spool.queue_dir().join("aa05.msg"), b"garbage").unwrap();

    let loaded = spool.load_all().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].envelope.id.as_str(), "aa03");
    assert!(dir.path().join("corrupt/aa04.msg").exists());
    assert!(dir.path().join("corrupt/aa05.msg").exists());
}

#[test]
fn leftover_temp_files_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    Spool::open(dir.path(), false).unwrap();
    let tmp = dir.path().join("queue/.aa06.msg.tmp");
    std::fs::write(&tmp, b"half").unwrap();
    let spool = Spool::open(dir.path(), false).unwrap();
    assert!(!tmp.exists());
    assert!(spool.load_all().unwrap().is_empty());
}

#[test]
fn queue_ids_sort_by_time_and_are_unique() {
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let a = QueueId::generate(t);
    let b = QueueId::generate(t + Duration::from_micros(1));
    assert!(a < b);
    assert_ne!(QueueId::generate(t), QueueId::generate(t));
    assert!(QueueId::try_from("../x".to_string()).is_err());
}

/// The file names in `dir`, sorted (segment_tests.rs uses it too).
pub(super) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_large_message_has_a_file_of_its_own_deleted_when_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), true).unwrap();
    let big = vec![b'b'; 100 * 1024];
    let env = envelope("aa12", &big);
    spool.store(&env, &big).unwrap();
    let queue = dir.path().join("queue");
    assert_eq!(names(&queue), vec!["aa12.msg".to_string()]);
    assert_eq!(spool.read(&env.id).unwrap().message(), &big[..]);
    spool.remove(&env.id).unwrap();
    assert!(names(&queue).is_empty());
}

#[test]
fn an_attached_spool_removes_from_a_segment_and_the_next_start_does_not_load_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), false).unwrap();
    spool.store(&envelope("aa13", b"x"), b"x").unwrap();
    spool.store(&envelope("aa14", b"y"), b"y").unwrap();
    drop(spool);
    // `queue remove` without a running relay works on an attached spool.
    let attached = Spool::attach(dir.path(), false);
    attached
        .remove(&QueueId::try_from("aa13".to_string()).unwrap())
        .unwrap();
    let loaded = Spool::open(dir.path(), false).unwrap().load_all().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].envelope.id.as_str(), "aa14");
}

/// Writes `pieces` through an [`Incoming`] and commits them under `env`.
async fn stream(spool: &Spool, env: &mut Envelope, pieces: &[&[u8]]) {
    let mut file = spool.begin(env).await.unwrap();
    for piece in pieces {
        file.write(piece).await.unwrap();
    }
    env.size = file.written();
    env.eight_bit = true;
    env.received = u64::MAX - 1;
    file.commit(env).await.unwrap();
}

#[tokio::test]
async fn a_streamed_message_reads_back_byte_for_byte_and_loads_with_its_final_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), true).unwrap();
    let mut env = envelope("aa20", b"");
    stream(
        &spool,
        &mut env,
        &[
            b"Received: x\r\n",
            b"From: a@example.com\r\n\r\n",
            b"hello\r\n",
        ],
    )
    .await;
    let message = b"Received: x\r\nFrom: a@example.com\r\n\r\nhello\r\n";
    assert_eq!(env.size, message.len() as u64);
    assert_eq!(spool.read(&env.id).unwrap().message(), message);
    let loaded = spool.load_all().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].envelope, env);
    let queue = dir.path().join("queue");
    assert_eq!(names(&queue), vec!["segment-0.log".to_string()]);
}

#[tokio::test]
async fn a_streamed_message_past_the_held_size_is_committed_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), true).unwrap();
    let mut env = envelope("aa22", b"");
    let body = vec![b'q'; incoming::HOLD];
    stream(&spool, &mut env, &[b"From: a@example.com\r\n\r\n", &body]).await;
    let queue = dir.path().join("queue");
    assert_eq!(names(&queue), vec!["aa22.msg".to_string()]);
    assert_eq!(spool.dir_sync_counts().1, 1);
    assert_eq!(spool.segment_sync_counts(), (0, 0));
    assert_eq!(spool.load_all().unwrap()[0].envelope, env);
}

#[tokio::test]
async fn a_stream_dropped_or_failing_before_its_commit_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), true).unwrap();
    let queue = dir.path().join("queue");
    let env = envelope("aa23", b"");
    // Past the bytes held in memory, the message is in its temp file.
    let mut file = spool.begin(&env).await.unwrap();
    file.write(b"From: a@example.com\r\n\r\n").await.unwrap();
    file.write(&vec![b'p'; incoming::HOLD]).await.unwrap();
    assert_eq!(names(&queue), vec![".aa23.msg.tmp".to_string()]);
    drop(file);
    assert!(names(&queue).is_empty());
    // A small one never had a file.
    let mut file = spool.begin(&env).await.unwrap();
    file.write(b"From: a@example.com\r\n\r\npartial")
        .await
        .unwrap();
    drop(file);
    assert!(names(&queue).is_empty());

    // A full disk at commit: refused, and the temp file is gone too.
    spool.disk_full_switch().set(true);
    let mut env = envelope("aa24", b"");
    let mut file = spool.begin(&env).await.unwrap();
    file.write(b"From: a@example.com\r\n\r\nx\r\n")
        .await
        .unwrap();
    env.size = file.written();
    let err = file.commit(&env).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
    assert!(names(&queue).is_empty());
    assert!(spool.load_all().unwrap().is_empty());
}

#[tokio::test]
async fn a_small_message_touches_no_file_until_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), true).unwrap();
    let queue = dir.path().join("queue");
    let mut env = envelope("aa30", b"");
    let mut file = spool.begin(&env).await.unwrap();
    file.write(b"Received: x\r\n").await.unwrap();
    file.write(b"From: a@example.com\r\n\r\nsmall\r\n")
        .await
        .unwrap();
    assert!(names(&queue).is_empty(), "{:?}", names(&queue));
    env.size = file.written();
    file.commit(&env).await.unwrap();
    assert_eq!(names(&queue), vec!["segment-0.log".to_string()]);
    assert_eq!(
        spool.read(&env.id).unwrap().message(),
        b"Received: x\r\nFrom: a@example.com\r\n\r\nsmall\r\n"
    );
}

#[tokio::test]
async fn messages_around_the_held_size_read_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), true).unwrap();
    let hold = incoming::HOLD;
    for (k, sizes) in [
        vec![hold],
        vec![hold - 1, 1],
        vec![hold - 1, 2],
        vec![10, hold, 10],
        vec![3 * hold + 7],
        vec![1; 300],
    ]
    .into_iter()
    .enumerate()
    {
        let pieces: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![b'a' + (i % 26) as u8; n])
            .collect();
        let refs: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
        let mut env = envelope(&format!("ab{k:02}"), b"");
        stream(&spool, &mut env, &refs).await;
        assert_eq!(
            spool.read(&env.id).unwrap().message(),
            refs.concat(),
            "{sizes:?}"
        );
        // Delivered: marked done in its segment, or its file deleted.
        spool.remove(&env.id).unwrap();
    }
}

/// Many commits at once, with fsync: each is in the queue when its commit returns (a new
/// Spool over the same folder, as after a restart, loads every one), and the segment
/// fdatasyncs they shared were no more than the commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_are_all_in_the_queue_when_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), true).unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut env = envelope(&format!("ac{i:02}"), b"");
            let body = format!("From: a@example.com\r\n\r\nmessage {i}\r\n");
            stream(&spool, &mut env, &[body.as_bytes()]).await;
            env
        }));
    }
    let mut committed = Vec::new();
    for t in tasks {
        committed.push(t.await.unwrap());
    }
    let (syncs, commits) = spool.segment_sync_counts();
    assert_eq!(commits, 32);
    assert!((1..=32).contains(&syncs), "{syncs}");
    drop(spool);
    let restarted = Spool::open(dir.path(), true).unwrap();
    let loaded = restarted.load_all().unwrap();
    assert_eq!(loaded.len(), 32);
    for env in &committed {
        assert!(loaded.iter().any(|m| &m.envelope == env), "{}", env.id);
    }
}
