//! One suite over the `Store` trait, run against every backend: the
//! embedded store; the ScyllaDB backend's logic over a keyspace simulated
//! statement by statement (tests/support/model.rs); and the ScyllaDB
//! backend on a real cluster when `CONFAB_TEST_SCYLLA_NODES` names one
//! (HOST:PORT, comma separated; scripts/test then runs it too: it is
//! marked ignored, and runs with `cargo test --test conformance --
//! --ignored`). A cluster for it, on a machine with a container engine:
//!
//! ```text
//! docker run -d --name scylla -p 9042:9042 scylladb/scylla:6.2 --smp 1 --memory 1G --overprovisioned 1
//! CONFAB_TEST_SCYLLA_NODES=127.0.0.1:9042 scripts/test
//! ```

mod support;

use confab_api::store::{AppendBatch, Appended, NewChat, Store, StoreError};
use confab_common::{ChatId, UserId};
use confab_proto::v1::{Chat, Message, Profile};
use confab_store::{scylla, EmbeddedStore, ScyllaConfig, ScyllaStore};
use std::time::Duration;

fn msg(chat: &str, seq: u64, sender: &str) -> Message {
    Message {
        chat_id: chat.into(),
        id: format!("{chat}-m{seq}"),
        seq,
        sender_id: sender.into(),
        body: format!("message {seq}"),
        created_at_ms: 1_767_225_600_000 + seq as i64,
        client_id: format!("k{seq}"),
        ..Default::default()
    }
}

fn append(chat: &Chat, messages: Vec<Message>, epoch: Option<u64>) -> AppendBatch {
    AppendBatch { chat_id: ChatId::from(chat.id.as_str()), messages, epoch, repeats_since_ms: Some(0) }
}

async fn group(store: &dyn Store, members: &[&str]) -> Chat {
    let member_ids: Vec<UserId> = members.iter().map(|m| UserId::from(*m)).collect();
    let new =
        NewChat { kind: "group".into(), title: Some("team".into()), created_by: member_ids[0].clone(), member_ids };
    let (chat, created) = store.create_chat(new).await.unwrap();
    assert!(created);
    chat
}

/// Every rule of the trait a router and an edge rely on.
async fn suite(store: &dyn Store) {
    let (alice, bob) = (UserId::from("alice"), UserId::from("bob"));
    let chat = group(store, &["alice", "bob"]).await;
    let id = ChatId::from(chat.id.as_str());
    assert_eq!(store.get_chat(&id).await.unwrap(), (chat.clone(), 0));
    assert_eq!(store.get_chat(&ChatId::from("no-such-chat")).await, Err(StoreError::NotFound));

    // Appends follow the last seq, whole batches at a time.
    let epoch = store.claim(&id, "router-1").await.unwrap();
    let batch = vec![msg(&chat.id, 1, "alice"), msg(&chat.id, 2, "bob"), msg(&chat.id, 3, "alice")];
    assert_eq!(store.append(append(&chat, batch, Some(epoch))).await.unwrap(), Appended::Written(3));
    let again = store.append(append(&chat, vec![msg(&chat.id, 3, "bob")], Some(epoch))).await;
    assert_eq!(again, Err(StoreError::SeqConflict { last_seq: 3, first_seq: 3 }));
    let gap = store.append(append(&chat, vec![msg(&chat.id, 5, "bob")], Some(epoch))).await;
    assert!(matches!(gap, Err(StoreError::SeqConflict { last_seq: 3, .. })), "{gap:?}");
    let unknown = Chat { id: "no-such-chat".into(), ..chat.clone() };
    let nowhere = store.append(append(&unknown, vec![msg("no-such-chat", 1, "bob")], None)).await;
    assert_eq!(nowhere, Err(StoreError::NotFound));

    // A repeated client id writes nothing, not even the batch's other
    // messages, and names the stored message.
    let repeat = Message { id: "other".into(), seq: 5, ..msg(&chat.id, 1, "alice") };
    let answered = store.append(append(&chat, vec![msg(&chat.id, 4, "bob"), repeat], Some(epoch))).await;
    assert_eq!(answered.unwrap(), Appended::Repeats(vec![msg(&chat.id, 1, "alice")]));
    assert_eq!(store.get_chat(&id).await.unwrap().1, 3);
    assert_eq!(store.get_message(&id, &format!("{}-m4", chat.id), 0).await.unwrap(), None);
    assert_eq!(store.find_by_client_id(&id, &alice, "k1", 0).await.unwrap(), Some(msg(&chat.id, 1, "alice")));
    assert_eq!(store.find_by_client_id(&id, &alice, "k1", i64::MAX).await.unwrap(), None, "too old");
    assert_eq!(store.find_by_client_id(&id, &bob, "k1", 0).await.unwrap(), None, "another sender's key");

    // Messages by id and by seq; a replacement keeps seq and id.
    assert_eq!(store.get_message(&id, &format!("{}-m2", chat.id), 0).await.unwrap(), Some(msg(&chat.id, 2, "bob")));
    assert_eq!(store.get_message(&id, "", 3).await.unwrap(), Some(msg(&chat.id, 3, "alice")));
    assert_eq!(store.get_message(&id, "", 9).await.unwrap(), None);
    assert_eq!(store.get_message(&id, "nope", 0).await.unwrap(), None);
    let edited = Message { body: "edited".into(), edited_at_ms: Some(1), ..msg(&chat.id, 2, "bob") };
    store.put_message(edited.clone(), Some(epoch)).await.unwrap();
    assert_eq!(store.get_message(&id, "", 2).await.unwrap(), Some(edited));
    let wrong_id = Message { id: "not-its-id".into(), ..msg(&chat.id, 2, "bob") };
    assert!(matches!(store.put_message(wrong_id, Some(epoch)).await, Err(StoreError::Invalid(_))));
    assert_eq!(store.put_message(msg(&chat.id, 9, "bob"), Some(epoch)).await, Err(StoreError::NotFound));

    // A newer claim fences the older writer, and the new one goes on.
    let newer = store.claim(&id, "router-2").await.unwrap();
    assert!(newer > epoch);
    let stale = store.append(append(&chat, vec![msg(&chat.id, 4, "bob")], Some(epoch))).await;
    assert_eq!(stale, Err(StoreError::Fenced));
    assert_eq!(store.save_chat(chat.clone(), vec![], false, Some(epoch)).await, Err(StoreError::Fenced));
    assert_eq!(store.put_message(msg(&chat.id, 1, "alice"), Some(epoch)).await, Err(StoreError::Fenced));
    let more: Vec<Message> = (4..=8).map(|s| msg(&chat.id, s, if s % 2 == 0 { "bob" } else { "alice" })).collect();
    assert_eq!(store.append(append(&chat, more, Some(newer))).await.unwrap(), Appended::Written(8));
    assert_eq!(store.claim(&ChatId::from("no-such-chat"), "router-2").await, Err(StoreError::NotFound));
    // An unfenced write (a tool's) applies over what the owner wrote.
    let by_tool = Message { body: "fixed by a tool".into(), ..msg(&chat.id, 4, "bob") };
    store.put_message(by_tool.clone(), None).await.unwrap();
    assert_eq!(store.get_message(&id, "", 4).await.unwrap(), Some(by_tool));
    store.put_message(msg(&chat.id, 4, "bob"), Some(newer)).await.unwrap();

    // History pages (CONTRACT §8.2): the newest, after a seq, before one.
    let seqs = |h: &confab_api::store::History| h.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let newest = store.history(&id, None, None, 3).await.unwrap();
    assert_eq!((seqs(&newest), newest.has_more), (vec![6, 7, 8], true));
    let after = store.history(&id, Some(2), None, 3).await.unwrap();
    assert_eq!((seqs(&after), after.has_more), (vec![3, 4, 5], true));
    let before = store.history(&id, None, Some(3), 10).await.unwrap();
    assert_eq!((seqs(&before), before.has_more), (vec![1, 2], false));
    let between = store.history(&id, Some(3), Some(6), 10).await.unwrap();
    assert_eq!((seqs(&between), between.has_more), (vec![4, 5], false));
    assert_eq!(seqs(&store.history(&id, Some(8), None, 10).await.unwrap()), Vec::<u64>::new());
    assert_eq!(store.history(&ChatId::from("no-such-chat"), None, None, 10).await.unwrap_err(), StoreError::NotFound);

    // Cursors never move back; unread leaves out one's own and deleted
    // messages.
    assert_eq!(store.get_cursor(&id, &bob).await.unwrap(), 0);
    assert_eq!(store.set_cursor(&id, &bob, 5).await.unwrap(), 5);
    assert_eq!(store.set_cursor(&id, &bob, 2).await.unwrap(), 5);
    assert_eq!(store.get_cursor(&id, &bob).await.unwrap(), 5);
    // After bob's cursor (5): 6 bob's own, 7 alice's (deleted below), 8 bob's own.
    assert_eq!(store.list_user_chats(&bob, 10).await.unwrap()[0].unread, 1);
    let deleted = Message { deleted: true, body: String::new(), ..msg(&chat.id, 7, "alice") };
    store.put_message(deleted, Some(newer)).await.unwrap();
    let bobs = store.list_user_chats(&bob, 10).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!((bobs[0].last_seq, bobs[0].last_read_seq, bobs[0].unread), (8, 5, 0));
    // alice never read: 2, 4, 6, 8 are bob's.
    let alices = store.list_user_chats(&alice, 10).await.unwrap();
    assert_eq!(alices[0].unread, 4);

    // The chat list: most recently active first, at most `limit`.
    let quiet = group(store, &["alice", "carol"]).await;
    let listed = store.list_user_chats(&alice, 10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|s| s.chat.as_ref().unwrap().id.as_str()).collect();
    // The quiet chat was created now; the busy one's newest message is from 2026-01-01.
    assert_eq!(ids, [quiet.id.as_str(), chat.id.as_str()], "ordered by activity");
    assert_eq!(store.list_user_chats(&alice, 1).await.unwrap().len(), 1);
    let lists = store.list_users_chats(&[alice.clone(), "carol".into()], 10).await.unwrap();
    assert_eq!(lists.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);

    // Members leave; a chat is deleted.
    let mut fewer = quiet.clone();
    fewer.members.retain(|m| m.user_id != "carol");
    let qid = ChatId::from(quiet.id.as_str());
    store.save_chat(fewer.clone(), vec!["carol".into()], false, None).await.unwrap();
    assert_eq!(store.get_chat(&qid).await.unwrap().0, fewer);
    assert!(store.list_user_chats(&"carol".into(), 10).await.unwrap().is_empty());
    store.save_chat(fewer, vec![], true, None).await.unwrap();
    assert_eq!(store.get_chat(&qid).await, Err(StoreError::NotFound));
    assert_eq!(store.list_user_chats(&alice, 10).await.unwrap().len(), 1);

    // A dm per pair of users, whichever of them asks.
    let dm = |a: &str, b: &str| NewChat {
        kind: "dm".into(),
        title: None,
        created_by: a.into(),
        member_ids: vec![a.into(), b.into()],
    };
    let (first, created) = store.create_chat(dm("dave", "erin")).await.unwrap();
    assert!(created);
    let (same, created) = store.create_chat(dm("erin", "dave")).await.unwrap();
    assert_eq!((same.id, created), (first.id, false));
    let three = NewChat { member_ids: vec!["a".into(), "b".into(), "c".into()], ..dm("a", "b") };
    assert!(matches!(store.create_chat(three).await, Err(StoreError::Invalid(_))));

    // Profiles: the latest replaces the one before.
    let profile = |name: &str| Profile { name: Some(name.into()), avatar_url: None };
    store.put_profiles(vec![(alice.clone(), profile("Alice"))]).await.unwrap();
    store.put_profiles(vec![(alice.clone(), profile("Alice B."))]).await.unwrap();
    let found = store.profiles(&[alice.clone(), "nobody".into()]).await.unwrap();
    assert_eq!(found, vec![(alice, profile("Alice B."))]);
}

/// Idempotency keys belong to one sender and one window.
async fn keys(store: &dyn Store) {
    let chat = group(store, &["alice", "bob"]).await;
    let first = msg(&chat.id, 1, "alice");
    assert_eq!(store.append(append(&chat, vec![first.clone()], None)).await.unwrap(), Appended::Written(1));
    // Bob's equal client id is not a repeat of alice's.
    let bobs = Message { id: "bobs".into(), sender_id: "bob".into(), ..msg(&chat.id, 2, "bob") };
    let bobs = Message { client_id: first.client_id.clone(), ..bobs };
    assert_eq!(store.append(append(&chat, vec![bobs], None)).await.unwrap(), Appended::Written(2));
    // Alice's own, sent before the window opens, is new again.
    let late = Message { id: "late".into(), ..msg(&chat.id, 3, "alice") };
    let late = Message { client_id: first.client_id.clone(), ..late };
    let window = AppendBatch { repeats_since_ms: Some(first.created_at_ms + 1), ..append(&chat, vec![late], None) };
    assert_eq!(store.append(window).await.unwrap(), Appended::Written(3));
}

/// History across the ScyllaDB backend's partitions (4,096 seqs each):
/// pages that straddle the boundary, and unread counted across it.
async fn long_history(store: &dyn Store) {
    let chat = group(store, &["frank", "grace"]).await;
    let id = ChatId::from(chat.id.as_str());
    let epoch = store.claim(&id, "router-1").await.unwrap();
    for start in (1..=4_200u64).step_by(200) {
        let batch: Vec<Message> = (start..start + 200).map(|s| msg(&chat.id, s, "frank")).collect();
        store.append(append(&chat, batch, Some(epoch))).await.unwrap();
    }
    let seqs = |h: &confab_api::store::History| h.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let page = store.history(&id, None, Some(4_100), 10).await.unwrap();
    assert_eq!((seqs(&page), page.has_more), ((4_090..4_100).collect::<Vec<_>>(), true));
    let page = store.history(&id, Some(4_090), None, 10).await.unwrap();
    assert_eq!((seqs(&page), page.has_more), ((4_091..4_101).collect::<Vec<_>>(), true));
    let page = store.history(&id, Some(4_000), Some(4_200), 100).await.unwrap();
    assert_eq!((seqs(&page), page.has_more), ((4_001..4_101).collect::<Vec<_>>(), true));
    let page = store.history(&id, Some(4_090), Some(4_100), 100).await.unwrap();
    assert_eq!((seqs(&page), page.has_more), ((4_091..4_100).collect::<Vec<_>>(), false));
    let newest = store.history(&id, None, None, 3).await.unwrap();
    assert_eq!(seqs(&newest), [4_198, 4_199, 4_200]);
    assert_eq!(store.get_message(&id, "", 4_097).await.unwrap(), Some(msg(&chat.id, 4_097, "frank")));
    let grace = UserId::from("grace");
    store.set_cursor(&id, &grace, 4_000).await.unwrap();
    let listed = store.list_user_chats(&grace, 10).await.unwrap();
    assert_eq!((listed[0].last_seq, listed[0].unread), (4_200, 200));
}

#[tokio::test]
async fn the_embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    suite(&store).await;
    keys(&store).await;
    long_history(&store).await;
}

#[tokio::test]
async fn the_scylla_backends_logic_conforms_over_simulated_tables() {
    let store = ScyllaStore::new(support::model::Model::default(), Duration::from_secs(5));
    suite(&store).await;
    keys(&store).await;
    long_history(&store).await;
}

#[tokio::test]
#[ignore = "needs CONFAB_TEST_SCYLLA_NODES: a ScyllaDB or Cassandra cluster (see this file's doc)"]
async fn the_scylla_backend_conforms_on_a_real_cluster() {
    let nodes = std::env::var("CONFAB_TEST_SCYLLA_NODES")
        .expect("CONFAB_TEST_SCYLLA_NODES must name a ScyllaDB or Cassandra cluster (HOST:PORT,...)");
    let mut config = ScyllaConfig::new(nodes.split(',').map(str::to_string).collect());
    config.replication_factor = 1;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    config.keyspace = format!("confab_test_{nanos}");
    let store = scylla::connect(&config).await.expect("the cluster answers");
    suite(&store).await;
    keys(&store).await;
    long_history(&store).await;
}
