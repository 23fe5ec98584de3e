//! The store's errors cross gRPC as themselves: the embedded store served
//! on a loopback socket, every refusal it answers reaches a `RemoteStore`
//! as the same `StoreError`, a seq conflict's numbers included.

use confab_api::store::{AppendBatch, NewChat, RemoteStore, Store, StoreError};
use confab_common::Shutdown;
use confab_proto::v1::Message;
use confab_store::EmbeddedStore;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The error both stores answer to the same call; they must agree.
async fn refused<T: Debug>(
    embedded: impl Future<Output = Result<T, StoreError>>,
    remote: impl Future<Output = Result<T, StoreError>>,
) -> StoreError {
    let embedded = embedded.await.expect_err("the embedded store refuses the call");
    let remote = remote.await.expect_err("the remote store refuses the call");
    assert_eq!(remote, embedded);
    embedded
}

fn message(chat_id: &str, id: &str, seq: u64) -> Message {
    Message {
        chat_id: chat_id.into(),
        id: id.into(),
        seq,
        sender_id: "alice".into(),
        body: format!("body {seq}"),
        created_at_ms: 1_767_225_600_000,
        client_id: format!("c{seq}"),
        ..Default::default()
    }
}

fn append(chat_id: &str, messages: Vec<Message>, epoch: Option<u64>) -> AppendBatch {
    AppendBatch { chat_id: chat_id.into(), messages, epoch, repeats_since_ms: None }
}

#[tokio::test]
async fn every_refusal_of_the_store_arrives_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let server = tokio::spawn(confab_store::serve(embedded.clone(), listener, shutdown.clone()));
    let remote = RemoteStore::connect_lazy(&url, Duration::from_secs(10)).unwrap();

    let group = NewChat {
        kind: "group".into(),
        title: None,
        created_by: "alice".into(),
        member_ids: vec!["alice".into(), "bob".into()],
    };
    let (chat, _) = remote.create_chat(group).await.unwrap();
    let first = message(&chat.id, "m1", 1);
    remote.append(append(&chat.id, vec![first.clone()], None)).await.unwrap();

    // Not found: no such chat, no message at that seq.
    let nowhere = || append("no-such-chat", vec![message("no-such-chat", "m1", 1)], None);
    assert_eq!(refused(embedded.append(nowhere()), remote.append(nowhere())).await, StoreError::NotFound);
    assert_eq!(
        refused(embedded.claim("no-such-chat", "r1"), remote.claim("no-such-chat", "r1")).await,
        StoreError::NotFound
    );
    let absent = message(&chat.id, "m9", 9);
    assert_eq!(
        refused(embedded.put_message(absent.clone(), None), remote.put_message(absent, None)).await,
        StoreError::NotFound
    );

    // A seq conflict, with the chat's last seq and the append's first.
    let gap = || append(&chat.id, vec![message(&chat.id, "m5", 5)], None);
    assert_eq!(
        refused(embedded.append(gap()), remote.append(gap())).await,
        StoreError::SeqConflict { last_seq: 1, first_seq: 5 }
    );
    let repeat = || append(&chat.id, vec![message(&chat.id, "m1-again", 1)], None);
    assert_eq!(
        refused(embedded.append(repeat()), remote.append(repeat())).await,
        StoreError::SeqConflict { last_seq: 1, first_seq: 1 }
    );

    // Invalid, with the store's words.
    let crowded_dm = || NewChat {
        kind: "dm".into(),
        title: None,
        created_by: "alice".into(),
        member_ids: vec!["alice".into(), "bob".into(), "carol".into()],
    };
    let invalid = refused(embedded.create_chat(crowded_dm()), remote.create_chat(crowded_dm())).await;
    assert!(matches!(&invalid, StoreError::Invalid(why) if !why.is_empty()), "{invalid:?}");
    let wrong_id = message(&chat.id, "not-m1", 1);
    let invalid = refused(embedded.put_message(wrong_id.clone(), None), remote.put_message(wrong_id, None)).await;
    assert!(matches!(invalid, StoreError::Invalid(_)), "{invalid:?}");

    // Fenced: a write with the epoch of an older claim.
    let older = remote.claim(&chat.id, "router-a").await.unwrap();
    let newer = remote.claim(&chat.id, "router-b").await.unwrap();
    assert!(newer > older);
    let next = || append(&chat.id, vec![message(&chat.id, "m2", 2)], Some(older));
    assert_eq!(refused(embedded.append(next()), remote.append(next())).await, StoreError::Fenced);
    let edited = Message { body: "edited".into(), ..first };
    assert_eq!(
        refused(embedded.put_message(edited.clone(), Some(older)), remote.put_message(edited, Some(older))).await,
        StoreError::Fenced
    );
    assert_eq!(
        refused(
            embedded.save_chat(chat.clone(), vec![], false, Some(older)),
            remote.save_chat(chat.clone(), vec![], false, Some(older))
        )
        .await,
        StoreError::Fenced
    );

    shutdown.trigger();
    server.await.unwrap().unwrap();
}
