//! The DM index's key: which chat a pair of users has.
//!
//! The key is [`crate::records::key`]. The first format joined the ids with
//! a newline, and ids may hold one: `v` asking for a DM with `"w\nz"` got
//! the DM of `"v\nw"` and `z`. A store written in that format is rewritten
//! once, when it is opened: every entry is keyed again from its chat's own
//! member list, and the format is recorded in the meta table.

use super::open::META;
use super::{decode_chat, internal, CHATS, DM_PAIRS};
use crate::store::StoreError;
use redb::{ReadableTable, WriteTransaction};

/// The meta key holding the DM index's key format (absent: the first).
pub(super) const DM_KEY_FORMAT: &str = "dm_key_format";
/// The format [`key`] writes.
const FORMAT: u64 = 2;

pub(super) use crate::records::key;

/// Rewrites a DM index of an older format into the current one; a no-op
/// once done. Runs inside the opening transaction, after the log's redo,
/// so entries of either origin are rewritten.
pub(super) fn migrate(tx: &WriteTransaction) -> Result<(), StoreError> {
    let mut meta = tx.open_table(META).map_err(internal)?;
    let format = meta.get(DM_KEY_FORMAT).map_err(internal)?.map_or(1, |v| v.value());
    if format >= FORMAT {
        return Ok(());
    }
    let mut pairs = tx.open_table(DM_PAIRS).map_err(internal)?;
    let chats = tx.open_table(CHATS).map_err(internal)?;
    let mut entries = Vec::new();
    for entry in pairs.iter().map_err(internal)? {
        let (k, v) = entry.map_err(internal)?;
        entries.push((k.value().to_string(), v.value().to_string()));
    }
    let (mut rewritten, mut dropped) = (0usize, 0usize);
    for (old_key, chat_id) in &entries {
        pairs.remove(old_key.as_str()).map_err(internal)?;
        let chat = match chats.get(chat_id.as_str()).map_err(internal)? {
            Some(bytes) => decode_chat(bytes.value())?,
            None => {
                dropped += 1;
                continue;
            }
        };
        match chat.members.as_slice() {
            [m1, m2] if chat.kind == "dm" => {
                pairs.insert(key(&m1.user_id, &m2.user_id).as_str(), chat_id.as_str()).map_err(internal)?;
                rewritten += 1;
            }
            _ => dropped += 1,
        }
    }
    meta.insert(DM_KEY_FORMAT, FORMAT).map_err(internal)?;
    if !entries.is_empty() {
        tracing::info!(rewritten, dropped, from = format, to = FORMAT, "store: rewrote the DM index keys");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::store::{NewChat, Store};
    use confab_proto::v1::{Chat, Member};
    use prost::Message as _;
    use redb::Database;
    use std::path::Path;
    use std::time::{Duration, Instant};

    fn dm(a: &str, b: &str) -> NewChat {
        NewChat { kind: "dm".into(), title: None, created_by: a.into(), member_ids: vec![a.into(), b.into()] }
    }

    #[tokio::test]
    async fn ids_holding_the_old_separator_get_different_dms() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let (first, created) = store.create_chat(dm("v\nw", "z")).await.unwrap();
        assert!(created);
        let (second, created) = store.create_chat(dm("v", "w\nz")).await.unwrap();
        assert!(created, "got the DM of another pair: {first:?}");
        assert_ne!(first.id, second.id);
        // The same pair, either way round, still gets its one DM.
        assert_eq!(store.create_chat(dm("z", "v\nw")).await.unwrap(), (first, false));
    }

    /// A store as the first format left it: chats in redb and the DM index
    /// keyed `"a\nb"`, no format recorded.
    fn write_old_store(dir: &Path, dms: &[(&str, &str, &str)]) {
        let db = Database::create(dir.join("confab.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut chats = tx.open_table(CHATS).unwrap();
            let mut pairs = tx.open_table(DM_PAIRS).unwrap();
            for (id, a, b) in dms {
                let member = |u: &str| Member { user_id: u.into(), role: "member".into(), joined_at_ms: 1 };
                let chat = Chat {
                    id: id.to_string(),
                    kind: "dm".into(),
                    members: vec![member(a), member(b)],
                    ..Chat::default()
                };
                chats.insert(*id, chat.encode_to_vec().as_slice()).unwrap();
                let (x, y) = if a <= b { (a, b) } else { (b, a) };
                pairs.insert(format!("{x}\n{y}").as_str(), *id).unwrap();
            }
            // An entry whose chat is gone is dropped.
            pairs.insert("gone\nuser", "no-such-chat").unwrap();
        }
        tx.commit().unwrap();
    }

    /// The redb file itself, once the store's writer thread has let go of it.
    async fn raw(dir: &Path) -> Database {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Database::create(dir.join("confab.redb")) {
                Ok(db) => return db,
                Err(e) if Instant::now() >= deadline => panic!("redb file still held: {e:?}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn index(dir: &Path) -> (Vec<(String, String)>, Option<u64>) {
        let db = raw(dir).await;
        let tx = db.begin_read().unwrap();
        let pairs = tx.open_table(DM_PAIRS).unwrap();
        let entries = pairs
            .iter()
            .unwrap()
            .map(|e| e.map(|(k, v)| (k.value().to_string(), v.value().to_string())).unwrap())
            .collect();
        let format = tx.open_table(META).unwrap().get(DM_KEY_FORMAT).unwrap().map(|v| v.value());
        (entries, format)
    }

    async fn close(store: EmbeddedStore) {
        store.close().await.unwrap();
        drop(store);
    }

    /// Opens the store once the previous instance has let go of the file.
    async fn open(dir: &Path) -> EmbeddedStore {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match EmbeddedStore::open(dir) {
                Ok(store) => return store,
                Err(e) if Instant::now() >= deadline => panic!("store did not reopen: {e:?}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    #[tokio::test]
    async fn opening_an_old_store_rewrites_its_dm_index_once() {
        let dir = tempfile::tempdir().unwrap();
        write_old_store(dir.path(), &[("dm-1", "v\nw", "z"), ("dm-2", "bob", "alice")]);

        let store = open(dir.path()).await;
        // The old pairs find their DMs; the colliding pair gets a new one.
        assert_eq!(store.create_chat(dm("z", "v\nw")).await.unwrap().0.id, "dm-1");
        assert_eq!(store.create_chat(dm("alice", "bob")).await.unwrap().0.id, "dm-2");
        let (other, created) = store.create_chat(dm("v", "w\nz")).await.unwrap();
        assert!(created && other.id != "dm-1", "{other:?}");
        close(store).await;

        let (mut entries, format) = index(dir.path()).await;
        entries.sort();
        let mut want = vec![
            (key("v\nw", "z"), "dm-1".to_string()),
            (key("alice", "bob"), "dm-2".to_string()),
            (key("v", "w\nz"), other.id.clone()),
        ];
        want.sort();
        assert_eq!((entries, format), (want, Some(FORMAT)));

        // Done once: an entry in the old format written now stays as it is.
        {
            let db = raw(dir.path()).await;
            let tx = db.begin_write().unwrap();
            tx.open_table(DM_PAIRS).unwrap().insert("x\ny", "dm-2").unwrap();
            tx.commit().unwrap();
        }
        let store = open(dir.path()).await;
        assert_eq!(store.create_chat(dm("alice", "bob")).await.unwrap().0.id, "dm-2");
        close(store).await;
        assert!(index(dir.path()).await.0.iter().any(|(k, _)| k == "x\ny"));
    }

    #[tokio::test]
    async fn a_new_store_records_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        close(open(dir.path()).await).await;
        assert_eq!(index(dir.path()).await, (Vec::new(), Some(FORMAT)));
    }
}
