//! A data directory written by the release before Contract 1.1 (its
//! messages have no attachments) opens and reads with today's code: the
//! checkpointed database and the records only its log held. The fixture
//! was made with that release's `confab dev`: a group chat of alice and
//! bob, two messages (the second a reply), a clean stop, one more message
//! and a kill, so the third lives only in the write-ahead log.

use confab_api::store::{AppendBatch, Store};
use confab_common::{ChatId, UserId};
use confab_proto::v1::{Attachment, Message, Profile};
use confab_store::EmbeddedStore;
use std::path::Path;
use std::process::Command;

const CHAT: &str = "01a24560-e4e3-71b9-9a48-a3f81358d6c1";
const FIRST: &str = "01a24560-e56e-75e7-bea5-6c669b90c78b";

fn unpack(into: &Path) -> std::path::PathBuf {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-dir-1.0.tgz");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(into)
        .status()
        .expect("tar is needed to unpack the fixture");
    assert!(status.success(), "tar xzf {} failed", archive.display());
    into.join("fx")
}

#[tokio::test]
async fn a_data_directory_of_the_previous_format_opens_and_takes_new_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = unpack(tmp.path());
    let chat = ChatId::from(CHAT);
    let store = EmbeddedStore::open(&dir).expect("the old data directory opens");
    let page = store.history(&chat, None, None, 10).await.unwrap().messages;
    let bodies: Vec<&str> = page.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["written before 1.1", "a reply", "only in the log"]);
    assert_eq!(page[0].id, FIRST);
    assert_eq!(page[1].reply_to.as_deref(), Some(FIRST));
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(page.iter().all(|m| m.attachments.is_empty()), "old records read without attachments");

    // 1.1 messages land after them and read back whole: one with the
    // typed attachment the first 1.1 builds wrote, one with the rendered
    // JSON today's edges send.
    let attachment =
        Attachment { url: "https://cdn.example/a.png".into(), r#type: "image/png".into(), ..Default::default() };
    let rendered = br#"[{"url":"https://cdn.example/b.png","type":"image/png"}]"#;
    let new = Message {
        chat_id: CHAT.into(),
        id: "m4".into(),
        seq: 4,
        sender_id: "alice".into(),
        body: String::new(),
        created_at_ms: 1,
        client_id: "c4".into(),
        attachments: vec![attachment.clone()],
        ..Default::default()
    };
    let newer = Message {
        id: "m5".into(),
        seq: 5,
        client_id: "c5".into(),
        attachments: vec![],
        attachments_json: rendered.to_vec().into(),
        ..new.clone()
    };
    store
        .append(AppendBatch { chat_id: chat.clone(), messages: vec![new, newer], epoch: None, repeats_since_ms: None })
        .await
        .unwrap();
    let page = store.history(&chat, Some(3), None, 10).await.unwrap().messages;
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].attachments, vec![attachment]);
    assert_eq!(&page[1].attachments_json[..], rendered);

    // It has no profiles table yet: none are found, then one is kept.
    let alice = UserId::from("alice");
    assert_eq!(store.profiles(std::slice::from_ref(&alice)).await.unwrap(), vec![]);
    let profile = Profile { name: Some("Alice".into()), avatar_url: None };
    store.put_profiles(vec![(alice.clone(), profile.clone())]).await.unwrap();
    assert_eq!(store.profiles(&[alice.clone(), UserId::from("bob")]).await.unwrap(), vec![(alice, profile)]);
}
