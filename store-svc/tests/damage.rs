//! A damaged store on disk: real files written by the store, then damaged
//! as a disk or an operator would (a flipped byte in the middle of the
//! log, a log zeroed or deleted, a database cut short). The store refuses
//! to start with an error naming the file (and the offset), and salvage
//! keeps what is valid without handing out a seq that may have been acked.

use confab_api::store::{AppendBatch, Appended, NewChat, Store};
use confab_common::{ChatId, UserId};
use confab_proto::v1::Message;
use confab_store::{Config, Damage, EmbeddedStore, OpenError};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn msg(chat: &str, seq: u64) -> Message {
    Message {
        chat_id: chat.into(),
        id: format!("m{seq}"),
        seq,
        sender_id: "alice".into(),
        body: format!("hello {seq}"),
        created_at_ms: seq as i64,
        client_id: format!("c{seq}"),
        ..Default::default()
    }
}

/// A store in `dir` with a group chat of alice and bob (checkpointed)
/// and `n` messages from alice, each its own log record, as a crash leaves
/// it: the database as of the last checkpoint, the messages in the log
/// alone. (A store that is only dropped commits what it had on the way
/// out, so the database file is put back as it was at the checkpoint.)
async fn crashed_store(dir: &Path, n: u64) -> String {
    let store = EmbeddedStore::open(dir).unwrap();
    let new = NewChat {
        kind: "group".into(),
        title: None,
        created_by: "alice".into(),
        member_ids: vec!["alice".into(), "bob".into()],
    };
    let (chat, _) = store.create_chat(new).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    wait_released(dir).await;
    // Opening checkpoints; the idle writer writes nothing more until asked.
    let store = EmbeddedStore::open(dir).unwrap();
    let checkpoint = std::fs::read(dir.join("confab.redb")).unwrap();
    for seq in 1..=n {
        let batch = AppendBatch {
            chat_id: chat.id.clone().into(),
            messages: vec![msg(&chat.id, seq)],
            epoch: None,
            repeats_since_ms: None,
        };
        assert_eq!(store.append(batch).await.unwrap(), Appended::Written(seq));
    }
    drop(store);
    wait_released(dir).await;
    std::fs::write(dir.join("confab.redb"), checkpoint).unwrap();
    chat.id
}

/// Waits until the dropped store's writer has let go of the database.
async fn wait_released(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while redb::Database::open(dir.join("confab.redb")).is_err() {
        assert!(Instant::now() < deadline, "the store's writer never let go of the database");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The offsets of the log's records of the current generation, walking
/// the format of `wal.rs` (len, crc, generation, changes).
fn record_offsets(log: &Path) -> Vec<u64> {
    let bytes = std::fs::read(log).unwrap();
    let generation = &bytes[8..16];
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + 16 <= bytes.len() && &bytes[at + 8..at + 16] == generation {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len < 8 {
            break;
        }
        offsets.push(at as u64);
        at += 8 + len;
    }
    offsets
}

fn flip(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], offset).unwrap();
}

async fn seqs(store: &EmbeddedStore, chat: &str) -> Vec<u64> {
    let page = store.history(&chat.into(), Some(0), None, 1000).await.unwrap();
    page.messages.iter().map(|m| m.seq).collect()
}

fn salvaging(dir: &Path) -> Config {
    Config { salvage: true, ..Config::new(dir.to_path_buf()) }
}

#[tokio::test]
async fn a_damaged_record_followed_by_valid_ones_refuses_to_start_and_salvage_skips_its_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let chat = crashed_store(dir.path(), 300).await;
    let log = dir.path().join("confab.wal");
    // The mark, then one record per message.
    let offsets = record_offsets(&log);
    assert_eq!(offsets.len(), 301);
    let victim = offsets[149];
    flip(&log, victim + 30);

    for _ in 0..2 {
        let refused = EmbeddedStore::open(dir.path()).err().expect("a damaged log must not open");
        match &refused {
            OpenError::DamagedLog { path, damage: Damage::Records { offset, records_after, .. } } => {
                assert_eq!(path, &log);
                assert_eq!((*offset, *records_after), (victim, 151));
            }
            other => panic!("expected a damaged log, got {other:?}"),
        }
        let text = refused.to_string();
        assert!(text.contains(&log.display().to_string()) && text.contains(&format!("offset {victim}")), "{text}");
        assert!(text.contains("--salvage"), "{text}");
        // Refusing changed nothing: the next start refuses alike.
    }

    let store = EmbeddedStore::open_with(&salvaging(dir.path())).unwrap();
    // Every valid record is kept: all messages but the one in the damaged record (seq 149).
    let kept = seqs(&store, &chat).await;
    assert_eq!(kept, (1..=300).filter(|&s| s != 149).collect::<Vec<_>>());
    // The next seq is past any the lost bytes could have held.
    let (_, last_seq) = store.get_chat(&ChatId::from(&chat)).await.unwrap();
    let lost = offsets[150] - offsets[149];
    assert!(last_seq >= 300 + lost / 24, "last seq {last_seq} after losing {lost} bytes");
    let next = AppendBatch {
        chat_id: chat.clone().into(),
        messages: vec![msg(&chat, last_seq + 1)],
        epoch: None,
        repeats_since_ms: None,
    };
    assert_eq!(store.append(next).await.unwrap(), Appended::Written(last_seq + 1));
    // Unread counts leave the skipped seqs out: bob has 299 + 1 messages.
    assert_eq!(store.list_user_chats(&UserId::from("bob"), 10).await.unwrap()[0].unread, 300);
    // The salvage was checkpointed: a plain start opens, with the same state.
    drop(store);
    wait_released(dir.path()).await;
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get_chat(&ChatId::from(&chat)).await.unwrap().1, last_seq + 1);
    assert_eq!(seqs(&store, &chat).await.len(), 300);
}

#[tokio::test]
async fn a_torn_last_record_is_dropped_and_the_store_starts() {
    let dir = tempfile::tempdir().unwrap();
    let chat = crashed_store(dir.path(), 20).await;
    let log = dir.path().join("confab.wal");
    let last = *record_offsets(&log).last().unwrap();
    flip(&log, last + 30);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(seqs(&store, &chat).await, (1..=19).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_zeroed_or_missing_log_refuses_to_start_when_the_database_says_it_was_begun() {
    let dir = tempfile::tempdir().unwrap();
    let chat = crashed_store(dir.path(), 10).await;
    let log = dir.path().join("confab.wal");
    let len = std::fs::metadata(&log).unwrap().len();
    let saved = std::fs::read(&log).unwrap();

    std::fs::write(&log, vec![0u8; len as usize]).unwrap();
    match EmbeddedStore::open(dir.path()) {
        Err(OpenError::DamagedLog { path, damage: Damage::LostStart { .. } }) => assert_eq!(path, log),
        other => panic!("expected a zeroed log to be refused, got {:?}", other.err()),
    }

    std::fs::remove_file(&log).unwrap();
    let refused = EmbeddedStore::open(dir.path()).err().expect("a missing log must not open");
    assert!(matches!(&refused, OpenError::DamagedLog { damage: Damage::Missing, .. }), "{refused:?}");
    assert!(refused.to_string().contains("is missing"), "{refused}");
    assert!(!log.exists(), "refusing must not create the log");

    // With the log back, nothing was lost.
    std::fs::write(&log, &saved).unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(seqs(&store, &chat).await, (1..=10).collect::<Vec<_>>());
    drop(store);
    wait_released(dir.path()).await;

    // Lost for good: salvage keeps what the database holds (the chat) and
    // skips every seq a full log could have held.
    let dir = tempfile::tempdir().unwrap();
    let chat = crashed_store(dir.path(), 10).await;
    std::fs::remove_file(dir.path().join("confab.wal")).unwrap();
    let store = EmbeddedStore::open_with(&salvaging(dir.path())).unwrap();
    assert!(seqs(&store, &chat).await.is_empty());
    let (_, last_seq) = store.get_chat(&ChatId::from(&chat)).await.unwrap();
    assert!(last_seq > 10 + (32 << 20) / 24, "last seq {last_seq}");
    assert_eq!(store.list_user_chats(&UserId::from("bob"), 10).await.unwrap()[0].unread, 0);
    drop(store);
    wait_released(dir.path()).await;
    assert!(EmbeddedStore::open(dir.path()).is_ok());
}

#[tokio::test]
async fn a_database_cut_short_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    for i in 0..50 {
        let new = NewChat {
            kind: "group".into(),
            title: Some("x".repeat(2000)),
            created_by: format!("user{i}").into(),
            member_ids: vec![format!("user{i}").into()],
        };
        store.create_chat(new).await.unwrap();
    }
    store.close().await.unwrap();
    drop(store);
    wait_released(dir.path()).await;
    let db = dir.path().join("confab.redb");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(len / 2).unwrap();

    let opened = std::panic::catch_unwind(|| EmbeddedStore::open(dir.path()).err());
    match opened.expect("opening a cut database must not panic") {
        Some(OpenError::DamagedDatabase { path, .. }) => assert_eq!(path, db),
        other => panic!("expected a damaged database, got {other:?}"),
    }
}
