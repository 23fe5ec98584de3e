//! The ScyllaDB backend's driver wiring, against `kassandra-tester`'s
//! in-memory CQL server on a loopback port: the session connects, the
//! keyspace and every table of the schema are created, every statement
//! prepares, values of every type go in and come back, and point writes
//! and reads work through the `Store` trait.
//!
//! That server ignores clustering ranges, ORDER BY, LIMIT, TTL and IF
//! conditions, so nothing here says a query means what it should: that is
//! the conformance suite's job against a real ScyllaDB or Cassandra
//! (tests/conformance.rs, with CONFAB_TEST_SCYLLA_NODES). Fenced writes
//! and claims (lightweight transactions) are left out for the same reason;
//! tests/scylla_fencing.rs models them.

use confab_api::store::{AppendBatch, Appended, NewChat, RemoteStore, Store};
use confab_common::{ChatId, Shutdown, UserId};
use confab_proto::v1::{Message, Profile};
use confab_store::{scylla, ScyllaConfig};
use kassandra_tester::kassandra::KassandraSession;
use kassandra_tester::KassandraTester;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn config(addr: std::net::SocketAddr) -> ScyllaConfig {
    let mut config = ScyllaConfig::new(vec![addr.to_string()]);
    config.replication_factor = 1;
    // The in-memory server has no system schema tables.
    config.schema_metadata = false;
    config
}

#[tokio::test(flavor = "current_thread")]
async fn driver_wiring_only_against_an_in_memory_cql_server() {
    KassandraTester::new(KassandraSession::new())
        .in_scope(|addr| async move {
            let store = scylla::connect(&config(addr)).await.expect("connects, creates the schema, prepares");

            let users: Vec<UserId> = vec!["alice".into(), "bob".into()];
            let new = NewChat {
                kind: "group".into(),
                title: Some("wiring".into()),
                created_by: users[0].clone(),
                member_ids: users.clone(),
            };
            let (chat, created) = store.create_chat(new).await.unwrap();
            assert!(created);
            let id = ChatId::from(chat.id.as_str());
            let (read, last) = store.get_chat(&id).await.unwrap();
            assert_eq!((read, last), (chat.clone(), 0));

            let m = Message {
                chat_id: chat.id.clone(),
                id: "m1".into(),
                seq: 1,
                sender_id: "alice".into(),
                body: "hello 👋".into(),
                created_at_ms: 1_767_225_600_000,
                client_id: "k1".into(),
                attachments_json: br#"[{"url":"https://cdn.example/a.png","type":"image/png"}]"#.to_vec().into(),
                sender: Some(Profile { name: Some("Alice".into()), avatar_url: None }),
                ..Default::default()
            };
            let batch =
                AppendBatch { chat_id: id.clone(), messages: vec![m.clone()], epoch: None, repeats_since_ms: None };
            assert_eq!(store.append(batch).await.unwrap(), Appended::Written(1));
            assert_eq!(store.get_chat(&id).await.unwrap().1, 1);
            assert_eq!(store.get_message(&id, "", 1).await.unwrap(), Some(m.clone()), "by seq");
            assert_eq!(store.get_message(&id, "m1", 0).await.unwrap(), Some(m.clone()), "by id");
            let alice = UserId::from("alice");
            assert_eq!(store.find_by_client_id(&id, &alice, "k1", 0).await.unwrap(), Some(m.clone()));
            assert_eq!(store.find_by_client_id(&id, &alice, "k2", 0).await.unwrap(), None);

            let edited = Message { body: "edited".into(), edited_at_ms: Some(1_767_225_601_000), ..m.clone() };
            store.put_message(edited.clone(), None).await.unwrap();
            assert_eq!(store.get_message(&id, "m1", 0).await.unwrap(), Some(edited));

            assert_eq!(store.set_cursor(&id, &alice, 1).await.unwrap(), 1);
            assert_eq!(store.get_cursor(&id, &alice).await.unwrap(), 1);
            let profile = Profile { name: Some("Alice".into()), avatar_url: Some("https://cdn.example/a.png".into()) };
            store.put_profiles(vec![(alice.clone(), profile.clone())]).await.unwrap();
            assert_eq!(store.profiles(&[alice.clone(), "carol".into()]).await.unwrap(), vec![(alice.clone(), profile)]);
            // Alice has read everything: her chat list needs no range scan
            // (which the in-memory server cannot even prepare).
            let listed = store.list_user_chats(&alice, 10).await.unwrap();
            assert_eq!(listed[0].unread, 0);
            assert_eq!(
                listed.iter().map(|s| s.chat.as_ref().unwrap().id.as_str()).collect::<Vec<_>>(),
                [chat.id.as_str()]
            );
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap();
}

/// `confab store --scylla-nodes` as a process runs it: store-svc serves the
/// ScyllaDB backend over gRPC, answers the health protocol, and a router's
/// client reaches it (wiring only, as above).
#[tokio::test(flavor = "current_thread")]
async fn store_svc_serves_the_scylla_backend_over_grpc_wiring_only() {
    KassandraTester::new(KassandraSession::new())
        .in_scope(|addr| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let shutdown = Shutdown::new();
            let server = tokio::spawn(confab_store::run_scylla(config(addr), listener, shutdown.clone()));
            let mut health =
                HealthClient::new(tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect_lazy());
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let request = HealthCheckRequest { service: "confab.v1.Store".into() };
                if let Ok(r) = health.check(request).await {
                    assert_eq!(r.into_inner().status(), ServingStatus::Serving);
                    break;
                }
                assert!(Instant::now() < deadline, "store-svc did not serve within 20 s");
                assert!(!server.is_finished(), "store-svc stopped: {:?}", server.await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let remote = RemoteStore::connect_lazy(&url, Duration::from_secs(10)).unwrap();
            let users: Vec<UserId> = vec!["alice".into(), "bob".into()];
            let new = NewChat { kind: "group".into(), title: None, created_by: users[0].clone(), member_ids: users };
            let (chat, _) = remote.create_chat(new).await.unwrap();
            let id = ChatId::from(chat.id.as_str());
            let m = Message {
                chat_id: chat.id.clone(),
                id: "m1".into(),
                seq: 1,
                sender_id: "alice".into(),
                body: "over gRPC".into(),
                client_id: "k1".into(),
                ..Default::default()
            };
            let batch =
                AppendBatch { chat_id: id.clone(), messages: vec![m.clone()], epoch: None, repeats_since_ms: None };
            assert_eq!(remote.append(batch).await.unwrap(), Appended::Written(1));
            assert_eq!(remote.get_message(&id, "m1", 0).await.unwrap(), Some(m));
            assert_eq!(remote.get_chat(&ChatId::from("nope")).await, Err(confab_api::store::StoreError::NotFound));
            shutdown.trigger();
            server.await.unwrap().expect("store-svc stops cleanly");
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap();
}
