//! [`CqlTables`]: the [`Tables`] on a ScyllaDB (or Cassandra) cluster, one
//! prepared statement each, through the driver's token-aware load
//! balancing. Consistency comes from the session's execution profile
//! (QUORUM, or LOCAL_QUORUM with a datacenter) and SERIAL (LOCAL_SERIAL)
//! for the claim's lightweight transaction.

use super::tables::{ChatRow, ClientKey, Head, MessageRow, NewRows, Owner, Tables};
use confab_api::store::StoreError;
use confab_proto::v1::{Chat, Profile};
use futures::TryStreamExt;
use prost::Message as _;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

type MessageCols = (String, i64, i64, String, String, String, bool, i64, Vec<u8>);

const MESSAGE_COLUMNS: &str = "chat_id, bucket, seq, id, sender_id, client_id, deleted, version, msg";

/// The statements, prepared once per session.
struct Prepared {
    owner: PreparedStatement,
    owner_serial: PreparedStatement,
    insert_owner: PreparedStatement,
    update_owner: PreparedStatement,
    head: PreparedStatement,
    put_head: PreparedStatement,
    chat: PreparedStatement,
    put_chat: PreparedStatement,
    delete_chat: PreparedStatement,
    user_chats: PreparedStatement,
    put_user_chat: PreparedStatement,
    delete_user_chat: PreparedStatement,
    claim_pair: PreparedStatement,
    put_message: PreparedStatement,
    put_message_id: PreparedStatement,
    put_client_id: PreparedStatement,
    message: PreparedStatement,
    messages_asc: PreparedStatement,
    messages_desc: PreparedStatement,
    senders: PreparedStatement,
    message_seq: PreparedStatement,
    client_key: PreparedStatement,
    cursor: PreparedStatement,
    put_cursor: PreparedStatement,
    profile: PreparedStatement,
    put_profile: PreparedStatement,
}

/// The statement texts, by name: what [`CqlTables::prepare`] prepares.
pub(crate) fn statements() -> Vec<(&'static str, String)> {
    let select_message = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND bucket = ?");
    vec![
        ("owner", "SELECT epoch, owner FROM chat_owners WHERE chat_id = ?".into()),
        ("insert_owner", "INSERT INTO chat_owners (chat_id, epoch, owner) VALUES (?, ?, ?) IF NOT EXISTS".into()),
        ("update_owner", "UPDATE chat_owners SET epoch = ?, owner = ? WHERE chat_id = ? IF epoch = ?".into()),
        ("head", "SELECT last_seq, last_at FROM chat_heads WHERE chat_id = ?".into()),
        ("put_head", "INSERT INTO chat_heads (chat_id, last_seq, last_at) VALUES (?, ?, ?)".into()),
        ("chat", "SELECT version, chat FROM chats WHERE chat_id = ?".into()),
        ("put_chat", "INSERT INTO chats (chat_id, version, chat) VALUES (?, ?, ?)".into()),
        ("delete_chat", "DELETE FROM chats WHERE chat_id = ?".into()),
        ("user_chats", "SELECT chat_id FROM user_chats WHERE user_id = ?".into()),
        ("put_user_chat", "INSERT INTO user_chats (user_id, chat_id) VALUES (?, ?)".into()),
        ("delete_user_chat", "DELETE FROM user_chats WHERE user_id = ? AND chat_id = ?".into()),
        ("claim_pair", "INSERT INTO dm_pairs (pair, chat_id) VALUES (?, ?) IF NOT EXISTS".into()),
        ("put_message", format!("INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")),
        ("put_message_id", "INSERT INTO message_ids (chat_id, id, seq) VALUES (?, ?, ?)".into()),
        (
            "put_client_id",
            "INSERT INTO client_ids (chat_id, sender_id, client_id, seq, created_at) VALUES (?, ?, ?, ?, ?)".into(),
        ),
        ("message", format!("{select_message} AND seq = ?")),
        ("messages_asc", format!("{select_message} AND seq >= ? AND seq <= ? ORDER BY seq ASC LIMIT ?")),
        ("messages_desc", format!("{select_message} AND seq >= ? AND seq <= ? ORDER BY seq DESC LIMIT ?")),
        (
            "senders",
            "SELECT sender_id, deleted FROM messages WHERE chat_id = ? AND bucket = ? AND seq >= ? AND seq <= ?".into(),
        ),
        ("message_seq", "SELECT seq FROM message_ids WHERE chat_id = ? AND id = ?".into()),
        (
            "client_key",
            "SELECT seq, created_at FROM client_ids WHERE chat_id = ? AND sender_id = ? AND client_id = ?".into(),
        ),
        ("cursor", "SELECT seq FROM cursors WHERE chat_id = ? AND user_id = ?".into()),
        ("put_cursor", "INSERT INTO cursors (chat_id, user_id, seq) VALUES (?, ?, ?)".into()),
        ("profile", "SELECT profile FROM profiles WHERE user_id = ?".into()),
        ("put_profile", "INSERT INTO profiles (user_id, profile) VALUES (?, ?)".into()),
    ]
}

/// The tables of one keyspace on a cluster.
pub struct CqlTables {
    session: Session,
    st: Prepared,
}

/// A driver error: the outcome of whatever it was is unknown, unless the
/// cluster refused the statement itself (our bug, or a schema out of
/// step).
fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("ScyllaDB: {e}"))
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("ScyllaDB: {e}"))
}

fn execution(e: scylla::errors::ExecutionError) -> StoreError {
    use scylla::errors::ExecutionError as E;
    match e {
        E::BadQuery(_) | E::PrepareError(_) => failed(e),
        other => unavailable(other),
    }
}

impl CqlTables {
    /// Prepares every statement on a session already using the keyspace.
    /// `local`: claims are serial within the session's datacenter
    /// (LOCAL_SERIAL), as its other statements are LOCAL_QUORUM.
    pub async fn prepare(session: Session, local: bool) -> Result<Self, StoreError> {
        use scylla::statement::{Consistency, SerialConsistency};
        let serial = if local { SerialConsistency::LocalSerial } else { SerialConsistency::Serial };
        let texts: std::collections::HashMap<&str, String> = statements().into_iter().collect();
        let prep = |name: &'static str| {
            let text = texts[name].clone();
            let session = &session;
            async move {
                let mut p =
                    session.prepare(text.clone()).await.map_err(|e| failed(format!("preparing {name}: {e}")))?;
                // Every statement may be retried by the driver: writes carry
                // their own timestamps or are idempotent upserts, and the
                // claims are lightweight transactions the logic re-reads.
                let conditional = text.contains(" IF ");
                p.set_is_idempotent(!conditional);
                if conditional {
                    p.set_serial_consistency(Some(serial));
                }
                Ok::<_, StoreError>(p)
            }
        };
        let st = Prepared {
            owner: prep("owner").await?,
            owner_serial: {
                let mut p = prep("owner").await?;
                p.set_consistency(if local { Consistency::LocalSerial } else { Consistency::Serial });
                p
            },
            insert_owner: prep("insert_owner").await?,
            update_owner: prep("update_owner").await?,
            head: prep("head").await?,
            put_head: prep("put_head").await?,
            chat: prep("chat").await?,
            put_chat: prep("put_chat").await?,
            delete_chat: prep("delete_chat").await?,
            user_chats: prep("user_chats").await?,
            put_user_chat: prep("put_user_chat").await?,
            delete_user_chat: prep("delete_user_chat").await?,
            claim_pair: prep("claim_pair").await?,
            put_message: prep("put_message").await?,
            put_message_id: prep("put_message_id").await?,
            put_client_id: prep("put_client_id").await?,
            message: prep("message").await?,
            messages_asc: prep("messages_asc").await?,
            messages_desc: prep("messages_desc").await?,
            senders: prep("senders").await?,
            message_seq: prep("message_seq").await?,
            client_key: prep("client_key").await?,
            cursor: prep("cursor").await?,
            put_cursor: prep("put_cursor").await?,
            profile: prep("profile").await?,
            put_profile: prep("put_profile").await?,
        };
        Ok(Self { session, st })
    }

    async fn write(
        &self,
        p: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        ts: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut bound = p.clone().bind(&values).map_err(failed)?;
        bound.set_timestamp(ts);
        self.session.execute_bound_unpaged(&bound).await.map_err(execution)?;
        Ok(())
    }

    async fn rows<R>(
        &self,
        p: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self.session.execute_unpaged(p, values).await.map_err(execution)?;
        let rows = result.into_rows_result().map_err(failed)?;
        rows.rows::<R>().map_err(failed)?.collect::<Result<Vec<R>, _>>().map_err(failed)
    }

    async fn row<R>(
        &self,
        p: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Option<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        Ok(self.rows::<R>(p, values).await?.into_iter().next())
    }

    /// A lightweight transaction's `[applied]` and the row it found.
    async fn conditional(
        &self,
        p: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<(bool, Row), StoreError> {
        let row: Row = self.row(p, values).await?.ok_or_else(|| failed("a conditional statement returned no row"))?;
        match row.columns.first() {
            Some(Some(CqlValue::Boolean(applied))) => Ok((*applied, row)),
            _ => Err(failed("a conditional statement returned no [applied]")),
        }
    }
}

fn message_row(c: MessageCols) -> MessageRow {
    let (chat_id, _bucket, seq, id, sender_id, client_id, deleted, version, msg) = c;
    MessageRow {
        chat_id,
        seq: super::fence::seq_of(seq),
        id,
        sender_id,
        client_id,
        deleted,
        version: super::fence::seq_of(version),
        msg,
    }
}

fn message_cols(r: &MessageRow) -> MessageCols {
    use super::fence::{bucket, seq_value};
    (
        r.chat_id.clone(),
        bucket(r.seq),
        seq_value(r.seq),
        r.id.clone(),
        r.sender_id.clone(),
        r.client_id.clone(),
        r.deleted,
        seq_value(r.version),
        r.msg.clone(),
    )
}

fn decode<M: prost::Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Internal(format!("stored {what}: {e}")))
}

#[async_trait::async_trait]
impl Tables for CqlTables {
    async fn owner_serial(&self, chat_id: &str) -> Result<Option<Owner>, StoreError> {
        let row: Option<(i64, String)> = self.row(&self.st.owner_serial, (chat_id,)).await?;
        Ok(row.map(|(epoch, owner)| Owner { epoch: super::fence::seq_of(epoch), owner }))
    }

    async fn owner(&self, chat_id: &str) -> Result<Option<Owner>, StoreError> {
        let row: Option<(i64, String)> = self.row(&self.st.owner, (chat_id,)).await?;
        Ok(row.map(|(epoch, owner)| Owner { epoch: super::fence::seq_of(epoch), owner }))
    }

    async fn swap_owner(&self, chat_id: &str, expected: Option<u64>, new: &Owner) -> Result<bool, StoreError> {
        let epoch = super::fence::seq_value(new.epoch);
        let (applied, _) = match expected {
            None => self.conditional(&self.st.insert_owner, (chat_id, epoch, new.owner.as_str())).await?,
            Some(e) => {
                let values = (epoch, new.owner.as_str(), chat_id, super::fence::seq_value(e));
                self.conditional(&self.st.update_owner, values).await?
            }
        };
        Ok(applied)
    }

    async fn head(&self, chat_id: &str) -> Result<Option<Head>, StoreError> {
        let row: Option<(i64, i64)> = self.row(&self.st.head, (chat_id,)).await?;
        Ok(row.map(|(s, at)| Head { last_seq: super::fence::seq_of(s), last_at: at }))
    }

    async fn put_head(&self, chat_id: &str, head: Head, ts: i64) -> Result<(), StoreError> {
        self.write(&self.st.put_head, (chat_id, super::fence::seq_value(head.last_seq), head.last_at), Some(ts)).await
    }

    async fn chat(&self, chat_id: &str) -> Result<Option<ChatRow>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = self.row(&self.st.chat, (chat_id,)).await?;
        row.map(|(v, bytes)| Ok(ChatRow { version: super::fence::seq_of(v), chat: decode::<Chat>("chat", &bytes)? }))
            .transpose()
    }

    async fn put_chat(&self, row: &ChatRow, ts: i64) -> Result<(), StoreError> {
        let values = (row.chat.id.as_str(), super::fence::seq_value(row.version), row.chat.encode_to_vec());
        self.write(&self.st.put_chat, values, Some(ts)).await
    }

    async fn delete_chat(&self, chat_id: &str, ts: i64) -> Result<(), StoreError> {
        self.write(&self.st.delete_chat, (chat_id,), Some(ts)).await
    }

    async fn user_chat_ids(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let pager = self.session.execute_iter(self.st.user_chats.clone(), (user_id,)).await.map_err(unavailable)?;
        let stream = pager.rows_stream::<(String,)>().map_err(failed)?;
        stream.map_ok(|(id,)| id).try_collect().await.map_err(unavailable)
    }

    async fn put_user_chat(&self, user_id: &str, chat_id: &str, ts: i64) -> Result<(), StoreError> {
        self.write(&self.st.put_user_chat, (user_id, chat_id), Some(ts)).await
    }

    async fn delete_user_chat(&self, user_id: &str, chat_id: &str, ts: i64) -> Result<(), StoreError> {
        self.write(&self.st.delete_user_chat, (user_id, chat_id), Some(ts)).await
    }

    async fn claim_pair(&self, pair: &str, chat_id: &str) -> Result<Option<String>, StoreError> {
        let (applied, row) = self.conditional(&self.st.claim_pair, (pair, chat_id)).await?;
        if applied {
            return Ok(None);
        }
        // Not applied: the row holds the pair's current values after
        // [applied] (pair, chat_id).
        let mut existing = row.columns.iter().skip(1).filter_map(|c| match c {
            Some(CqlValue::Text(s)) => Some(s.clone()),
            _ => None,
        });
        existing.next_back().map(Some).ok_or_else(|| failed("a lost dm claim returned no chat"))
    }

    async fn put_new_messages(&self, rows: &[NewRows], ts: i64) -> Result<(), StoreError> {
        let mut messages = Batch::new(BatchType::Unlogged);
        let mut ids = Batch::new(BatchType::Unlogged);
        let mut keys = Batch::new(BatchType::Unlogged);
        for _ in rows {
            messages.append_statement(self.st.put_message.clone());
            ids.append_statement(self.st.put_message_id.clone());
            keys.append_statement(self.st.put_client_id.clone());
        }
        for b in [&mut messages, &mut ids, &mut keys] {
            b.set_timestamp(Some(ts));
            b.set_is_idempotent(true);
        }
        let message_values: Vec<MessageCols> = rows.iter().map(|r| message_cols(&r.row)).collect();
        let id_values: Vec<(&str, &str, i64)> = rows
            .iter()
            .map(|r| (r.row.chat_id.as_str(), r.row.id.as_str(), super::fence::seq_value(r.row.seq)))
            .collect();
        let key_values: Vec<(&str, &str, &str, i64, i64)> = rows
            .iter()
            .map(|r| {
                let m = &r.row;
                (
                    m.chat_id.as_str(),
                    m.sender_id.as_str(),
                    m.client_id.as_str(),
                    super::fence::seq_value(m.seq),
                    r.created_at,
                )
            })
            .collect();
        let (a, b, c) = tokio::join!(
            self.session.batch(&messages, message_values),
            self.session.batch(&ids, id_values),
            self.session.batch(&keys, key_values),
        );
        a.map_err(execution)?;
        b.map_err(execution)?;
        c.map_err(execution)?;
        Ok(())
    }

    async fn message(&self, chat_id: &str, seq: u64) -> Result<Option<MessageRow>, StoreError> {
        use super::fence::{bucket, seq_value};
        let row: Option<MessageCols> = self.row(&self.st.message, (chat_id, bucket(seq), seq_value(seq))).await?;
        Ok(row.map(message_row))
    }

    async fn put_message(&self, row: &MessageRow, ts: i64) -> Result<(), StoreError> {
        self.write(&self.st.put_message, message_cols(row), Some(ts)).await
    }

    async fn messages(
        &self,
        chat_id: &str,
        bucket: i64,
        lo: u64,
        hi: u64,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<MessageRow>, StoreError> {
        use super::fence::seq_value;
        let p = if newest_first { &self.st.messages_desc } else { &self.st.messages_asc };
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<MessageCols> = self.rows(p, (chat_id, bucket, seq_value(lo), seq_value(hi), limit)).await?;
        Ok(rows.into_iter().map(message_row).collect())
    }

    async fn senders(&self, chat_id: &str, bucket: i64, lo: u64, hi: u64) -> Result<Vec<(String, bool)>, StoreError> {
        use super::fence::seq_value;
        let values = (chat_id, bucket, seq_value(lo), seq_value(hi));
        let pager = self.session.execute_iter(self.st.senders.clone(), values).await.map_err(unavailable)?;
        let stream = pager.rows_stream::<(String, bool)>().map_err(failed)?;
        stream.try_collect().await.map_err(unavailable)
    }

    async fn message_seq(&self, chat_id: &str, message_id: &str) -> Result<Option<u64>, StoreError> {
        let row: Option<(i64,)> = self.row(&self.st.message_seq, (chat_id, message_id)).await?;
        Ok(row.map(|(s,)| super::fence::seq_of(s)))
    }

    async fn client_key(
        &self,
        chat_id: &str,
        sender_id: &str,
        client_id: &str,
    ) -> Result<Option<ClientKey>, StoreError> {
        let row: Option<(i64, i64)> = self.row(&self.st.client_key, (chat_id, sender_id, client_id)).await?;
        Ok(row.map(|(seq, created_at)| ClientKey { seq: super::fence::seq_of(seq), created_at }))
    }

    async fn cursor(&self, chat_id: &str, user_id: &str) -> Result<Option<u64>, StoreError> {
        let row: Option<(i64,)> = self.row(&self.st.cursor, (chat_id, user_id)).await?;
        Ok(row.map(|(s,)| super::fence::seq_of(s)))
    }

    async fn put_cursor(&self, chat_id: &str, user_id: &str, seq: u64) -> Result<(), StoreError> {
        let seq = super::fence::seq_value(seq);
        self.write(&self.st.put_cursor, (chat_id, user_id, seq), Some(seq)).await
    }

    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, StoreError> {
        let row: Option<(Vec<u8>,)> = self.row(&self.st.profile, (user_id,)).await?;
        row.map(|(bytes,)| decode::<Profile>("profile", &bytes)).transpose()
    }

    async fn put_profile(&self, user_id: &str, profile: &Profile) -> Result<(), StoreError> {
        self.write(&self.st.put_profile, (user_id, profile.encode_to_vec()), None).await
    }
}
