//! The ScyllaDB backend's fencing, as a model: two store-svc replicas run
//! the backend's own logic ([`ScyllaStore`]) over one simulated keyspace
//! whose tables behave as ScyllaDB's do statement by statement (a write
//! wins over another to the same cell when its write timestamp is higher,
//! a conditional statement is atomic), and a scheduler runs every
//! interleaving of their statements. A deposed owner (epoch 1) appends or
//! edits while a new owner claims the chat (epoch 2) and writes; whatever
//! the order, nothing acknowledged is lost or overwritten, no seq repeats
//! and none is skipped, and a retried send is stored once.
//!
//! What a real cluster adds (replicas, QUORUM, paxos) is not simulated:
//! each statement here is atomic and seen by every later one, which is
//! what QUORUM writes and reads and SERIAL claims give each statement.

mod support;

use confab_api::store::{AppendBatch, Appended, NewChat, Store, StoreError};
use confab_common::{ChatId, UserId};
use confab_proto::v1::{Message, Profile, Reaction};
use confab_store::scylla::{ChatRow, ClientKey, Head, MessageRow, NewRows, Owner, ScyllaStore, Tables};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::model::Model;
use tokio::sync::{mpsc, oneshot};

/// A statement about to run (which replica asks, and the go-ahead), or
/// the end of a replica's operation.
struct Turn {
    actor: usize,
    go: Option<oneshot::Sender<()>>,
}

/// The model as one replica sees it: each statement waits for its turn.
#[derive(Clone)]
struct Gated {
    model: Model,
    actor: usize,
    turns: mpsc::UnboundedSender<Turn>,
}

impl Gated {
    async fn turn(&self) {
        let (go, wait) = oneshot::channel();
        // The scheduler outlives every replica it runs.
        let _ = self.turns.send(Turn { actor: self.actor, go: Some(go) });
        let _ = wait.await;
    }
}

macro_rules! gated {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        #[async_trait::async_trait]
        impl Tables for Gated {
            $( async fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.turn().await;
                self.model.$name($($arg),*).await
            } )*
        }
    };
}

gated! {
    fn owner_serial(&self, chat_id: &str) -> Result<Option<Owner>, StoreError>;
    fn owner(&self, chat_id: &str) -> Result<Option<Owner>, StoreError>;
    fn swap_owner(&self, chat_id: &str, expected: Option<u64>, new: &Owner) -> Result<bool, StoreError>;
    fn head(&self, chat_id: &str) -> Result<Option<Head>, StoreError>;
    fn put_head(&self, chat_id: &str, head: Head, ts: i64) -> Result<(), StoreError>;
    fn chat(&self, chat_id: &str) -> Result<Option<ChatRow>, StoreError>;
    fn put_chat(&self, row: &ChatRow, ts: i64) -> Result<(), StoreError>;
    fn delete_chat(&self, chat_id: &str, ts: i64) -> Result<(), StoreError>;
    fn user_chat_ids(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
    fn put_user_chat(&self, user_id: &str, chat_id: &str, ts: i64) -> Result<(), StoreError>;
    fn delete_user_chat(&self, user_id: &str, chat_id: &str, ts: i64) -> Result<(), StoreError>;
    fn claim_pair(&self, pair: &str, chat_id: &str) -> Result<Option<String>, StoreError>;
    fn put_new_messages(&self, rows: &[NewRows], ts: i64) -> Result<(), StoreError>;
    fn message(&self, chat_id: &str, seq: u64) -> Result<Option<MessageRow>, StoreError>;
    fn put_message(&self, row: &MessageRow, ts: i64) -> Result<(), StoreError>;
    fn messages(&self, chat_id: &str, bucket: i64, lo: u64, hi: u64, newest_first: bool, limit: usize) -> Result<Vec<MessageRow>, StoreError>;
    fn senders(&self, chat_id: &str, bucket: i64, lo: u64, hi: u64) -> Result<Vec<(String, bool)>, StoreError>;
    fn message_seq(&self, chat_id: &str, message_id: &str) -> Result<Option<u64>, StoreError>;
    fn client_key(&self, chat_id: &str, sender_id: &str, client_id: &str) -> Result<Option<ClientKey>, StoreError>;
    fn cursor(&self, chat_id: &str, user_id: &str) -> Result<Option<u64>, StoreError>;
    fn put_cursor(&self, chat_id: &str, user_id: &str, seq: u64) -> Result<(), StoreError>;
    fn profile(&self, user_id: &str) -> Result<Option<Profile>, StoreError>;
    fn put_profile(&self, user_id: &str, profile: &Profile) -> Result<(), StoreError>;
}

const DEADLINE: Duration = Duration::from_secs(60);

fn store<T: Tables>(tables: T) -> ScyllaStore<T> {
    ScyllaStore::new(tables, DEADLINE)
}

/// Runs `actors` (each an operation on its own replica, sending its
/// [`Turn`]s to `turns`) with their statements in the order `choices` says
/// at each point where more than one waits (the first waiting actor past
/// the end of `choices`); returns the choices made, with how many actors
/// waited at each.
async fn interleave<F>(
    turns: (mpsc::UnboundedSender<Turn>, mpsc::UnboundedReceiver<Turn>),
    actors: Vec<F>,
    choices: &[usize],
) -> Vec<(usize, usize)>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = turns;
    let mut live = actors.len();
    for (actor, op) in actors.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            op.await;
            let _ = tx.send(Turn { actor, go: None });
        });
    }
    let mut made = Vec::new();
    let mut waiting: Vec<(usize, oneshot::Sender<()>)> = Vec::new();
    while live > 0 {
        // Every live actor is either at its next statement or done.
        while waiting.len() < live {
            let turn = tokio::time::timeout(DEADLINE, rx.recv()).await.expect("an actor stalled").expect("open");
            match turn.go {
                Some(go) => waiting.push((turn.actor, go)),
                None => live -= 1,
            }
        }
        if waiting.is_empty() {
            break;
        }
        waiting.sort_by_key(|w| w.0);
        let pick = if waiting.len() == 1 {
            0
        } else {
            let c = choices.get(made.len()).copied().unwrap_or(0);
            made.push((c, waiting.len()));
            c
        };
        let _ = waiting.remove(pick).1.send(());
    }
    made
}

/// Every schedule, depth first: after a run, each decision it took by
/// default is tried with each other choice.
async fn every_schedule<F, Fut>(mut run: F) -> usize
where
    F: FnMut(Vec<usize>) -> Fut,
    Fut: std::future::Future<Output = Vec<(usize, usize)>>,
{
    let mut todo = vec![Vec::new()];
    let mut runs = 0;
    while let Some(prefix) = todo.pop() {
        let made = run(prefix.clone()).await;
        runs += 1;
        for i in prefix.len()..made.len() {
            for other in 1..made[i].1 {
                let mut next: Vec<usize> = made[..i].iter().map(|m| m.0).collect();
                next.push(other);
                todo.push(next);
            }
        }
    }
    runs
}

fn message(chat: &ChatId, seq: u64, sender: &str, client_id: &str, body: &str) -> Message {
    Message {
        chat_id: chat.to_string(),
        id: format!("{sender}-{client_id}-{seq}"),
        seq,
        sender_id: sender.into(),
        body: body.into(),
        created_at_ms: 1_000 + seq as i64,
        client_id: client_id.into(),
        ..Default::default()
    }
}

fn batch(chat: &ChatId, m: Message, epoch: u64) -> AppendBatch {
    AppendBatch { chat_id: chat.clone(), messages: vec![m], epoch: Some(epoch), repeats_since_ms: Some(0) }
}

/// A group of alice and bob whose first message was appended by the owner
/// of epoch 1.
async fn chat_with_one_message(model: &Model) -> ChatId {
    let direct = store(model.clone());
    let users: Vec<UserId> = vec!["alice".into(), "bob".into()];
    let new = NewChat { kind: "group".into(), title: None, created_by: users[0].clone(), member_ids: users };
    let chat = ChatId::from(direct.create_chat(new).await.unwrap().0.id.as_str());
    assert_eq!(direct.claim(&chat, "router-a").await.unwrap(), 1);
    let first = message(&chat, 1, "alice", "k1", "first");
    assert_eq!(direct.append(batch(&chat, first, 1)).await.unwrap(), Appended::Written(1));
    chat
}

/// One replica's operation, run by [`interleave`].
type Op = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A keyspace holding [`chat_with_one_message`], and two replicas on it
/// whose statements take turns.
struct Scene {
    model: Model,
    chat: ChatId,
    turns: (mpsc::UnboundedSender<Turn>, mpsc::UnboundedReceiver<Turn>),
    replicas: [ScyllaStore<Gated>; 2],
}

async fn scene() -> Scene {
    let model = Model::default();
    let chat = chat_with_one_message(&model).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let replica = |actor| store(Gated { model: model.clone(), actor, turns: tx.clone() });
    let replicas = [replica(0), replica(1)];
    Scene { model, chat, turns: (tx, rx), replicas }
}

/// The history as a reader sees it.
async fn history(model: &Model, chat: &ChatId) -> Vec<Message> {
    let h = store(model.clone()).history(chat, Some(0), None, 100).await.unwrap();
    assert!(!h.has_more);
    h.messages
}

/// While router A (epoch 1) appends alice's second message, router B
/// claims the chat and appends bob's; then alice's client, if A did not
/// acknowledge, sends again (same client id) through B.
#[tokio::test(flavor = "current_thread")]
async fn a_deposed_owners_append_is_acked_only_if_kept_in_every_interleaving() {
    let runs = every_schedule(|choices| async move {
        let Scene { model, chat, turns, replicas: [a, b] } = scene().await;
        let a_result = Arc::new(Mutex::new(None));
        let b_result = Arc::new(Mutex::new(None));
        let actors: Vec<Op> = vec![
            Box::pin({
                let (chat, out) = (chat.clone(), a_result.clone());
                async move {
                    let m = message(&chat, 2, "alice", "k2", "from A");
                    *out.lock().unwrap() = Some(a.append(batch(&chat, m, 1)).await);
                }
            }),
            Box::pin({
                let (chat, out) = (chat.clone(), b_result.clone());
                async move {
                    let epoch = b.claim(&chat, "router-b").await.unwrap();
                    let (_, last) = b.get_chat(&chat).await.unwrap();
                    let m = message(&chat, last + 1, "bob", "k3", "from B");
                    *out.lock().unwrap() = Some((epoch, b.append(batch(&chat, m.clone(), epoch)).await, m));
                }
            }),
        ];
        let made = interleave(turns, actors, &choices).await;

        let direct = store(model.clone());
        let a_acked = match a_result.lock().unwrap().take().unwrap() {
            Ok(Appended::Written(2)) => true,
            Err(StoreError::Fenced | StoreError::SeqConflict { .. }) => false,
            other => panic!("{choices:?}: A answered {other:?}"),
        };
        let (epoch, b_answer, bob) = b_result.lock().unwrap().take().unwrap();
        assert_eq!(epoch, 2);
        assert_eq!(b_answer, Ok(Appended::Written(bob.seq)), "{choices:?}: the owner's append is acked");
        // Alice's client retries through B what A did not acknowledge.
        if !a_acked {
            let (_, last) = direct.get_chat(&chat).await.unwrap();
            let retry = message(&chat, last + 1, "alice", "k2", "from B, retried");
            match direct.append(batch(&chat, retry, 2)).await.unwrap() {
                Appended::Written(_) => {}
                Appended::Repeats(r) => assert_eq!(r.len(), 1, "{choices:?}"),
            }
        }

        let h = history(&model, &chat).await;
        let seqs: Vec<u64> = h.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=h.len() as u64).collect::<Vec<_>>(), "{choices:?}: no seq repeats or is skipped");
        assert!(h.iter().any(|m| m.id == bob.id && m.seq == bob.seq), "{choices:?}: B's acked message is kept");
        let alice_k2: Vec<&Message> = h.iter().filter(|m| m.client_id == "k2").collect();
        assert_eq!(alice_k2.len(), 1, "{choices:?}: alice's send is stored once: {h:?}");
        if a_acked {
            assert_eq!((alice_k2[0].seq, alice_k2[0].body.as_str()), (2, "from A"), "{choices:?}: A's ack is kept");
        }
        assert_eq!(h[0].body, "first");
        made
    })
    .await;
    assert!(runs > 20, "only {runs} interleavings were run");
}

/// While router A (epoch 1) edits the first message, router B claims the
/// chat and adds a reaction to it (reading it, then writing it back).
#[tokio::test(flavor = "current_thread")]
async fn a_deposed_owners_edit_never_overwrites_the_new_owners_write() {
    let runs = every_schedule(|choices| async move {
        let Scene { model, chat, turns, replicas: [a, b] } = scene().await;
        let a_result = Arc::new(Mutex::new(None));
        let b_result = Arc::new(Mutex::new(None));
        let actors: Vec<Op> = vec![
            Box::pin({
                let (chat, out) = (chat.clone(), a_result.clone());
                async move {
                    let mut m = message(&chat, 1, "alice", "k1", "first");
                    m.body = "edited by A".into();
                    *out.lock().unwrap() = Some(a.put_message(m, Some(1)).await);
                }
            }),
            Box::pin({
                let (chat, out) = (chat.clone(), b_result.clone());
                async move {
                    let epoch = b.claim(&chat, "router-b").await.unwrap();
                    let mut m = b.get_message(&chat, "", 1).await.unwrap().unwrap();
                    m.reactions.push(Reaction { emoji: "👍".into(), user_ids: vec!["bob".into()] });
                    *out.lock().unwrap() = Some((m.body.clone(), b.put_message(m, Some(epoch)).await));
                }
            }),
        ];
        let made = interleave(turns, actors, &choices).await;

        let a_acked = match a_result.lock().unwrap().take().unwrap() {
            Ok(()) => true,
            Err(StoreError::Fenced) => false,
            other => panic!("{choices:?}: A answered {other:?}"),
        };
        let (b_read_body, b_answer) = b_result.lock().unwrap().take().unwrap();
        assert_eq!(b_answer, Ok(()), "{choices:?}: the owner's write is acked");
        let h = history(&model, &chat).await;
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].reactions.len(), 1, "{choices:?}: B's acked reaction is kept");
        assert_eq!(h[0].body, b_read_body, "{choices:?}: what B wrote stands");
        if a_acked {
            assert_eq!(h[0].body, "edited by A", "{choices:?}: A's acked edit was seen and kept by B");
        }
        made
    })
    .await;
    assert!(runs > 10, "only {runs} interleavings were run");
}

/// Schedules drawn from a fixed seed: for scenarios with too many
/// interleavings to run them all.
async fn sampled_schedules<F, Fut>(runs: usize, mut run: F)
where
    F: FnMut(Vec<usize>) -> Fut,
    Fut: std::future::Future<Output = Vec<(usize, usize)>>,
{
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..runs {
        let choices = (0..64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 33) as usize % 2
            })
            .collect();
        run(choices).await;
    }
}

/// Two replicas claim at once and then append: each claim gets its own
/// epoch, and an acknowledged append is kept whoever made it. (About ten
/// million interleavings: 2,000 drawn from a fixed seed.)
#[tokio::test(flavor = "current_thread")]
async fn concurrent_claims_get_distinct_epochs_and_only_the_last_writes() {
    sampled_schedules(2_000, |choices| async move {
        let Scene { model, chat, turns, replicas } = scene().await;
        let results = Arc::new(Mutex::new(Vec::new()));
        let actors: Vec<Op> = replicas
            .into_iter()
            .enumerate()
            .map(|(actor, s)| -> Op {
                let (chat, out) = (chat.clone(), results.clone());
                Box::pin(async move {
                    let epoch = s.claim(&chat, &format!("router-{actor}")).await.unwrap();
                    let (_, last) = s.get_chat(&chat).await.unwrap();
                    let m = message(&chat, last + 1, &format!("user{actor}"), "k", "x");
                    let r = s.append(batch(&chat, m, epoch)).await;
                    out.lock().unwrap().push((actor, epoch, r));
                })
            })
            .collect();
        let made = interleave(turns, actors, &choices).await;
        let results = results.lock().unwrap().clone();
        let mut epochs: Vec<u64> = results.iter().map(|r| r.1).collect();
        epochs.sort_unstable();
        assert_eq!(epochs, [2, 3], "{choices:?}");
        let newest = results.iter().find(|r| r.1 == 3).unwrap();
        assert!(matches!(newest.2, Ok(Appended::Written(_))), "{choices:?}: {results:?}");
        let h = history(&model, &chat).await;
        let seqs: Vec<u64> = h.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=h.len() as u64).collect::<Vec<_>>(), "{choices:?}");
        for (actor, _, r) in &results {
            match r {
                Ok(Appended::Written(seq)) => {
                    let sender = format!("user{actor}");
                    assert!(
                        h.iter().any(|m| m.seq == *seq && m.sender_id == sender),
                        "{choices:?}: {sender}'s ack at {seq} is kept"
                    );
                }
                Err(StoreError::Fenced | StoreError::SeqConflict { .. }) => {}
                other => panic!("{choices:?}: {other:?}"),
            }
        }
        made
    })
    .await;
}
