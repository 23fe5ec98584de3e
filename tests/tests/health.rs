//! Every gRPC role answers the standard health protocol, and a router's
//! readiness means something: SERVING only while it is in the ring and its
//! store-svc is SERVING.

use confab_tests::process::Roles;
use confab_tests::wait_until;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// What `url`'s health service says of `service` ("" for the server), or
/// `None` when it does not answer.
async fn status(url: &str, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string()).ok()?;
    let mut client = HealthClient::new(channel.connect_timeout(Duration::from_secs(1)).connect_lazy());
    let check = client.check(HealthCheckRequest { service: service.into() });
    let answer = tokio::time::timeout(Duration::from_secs(2), check).await.ok()?.ok()?;
    Some(answer.get_ref().status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_role_is_serving_and_a_router_without_its_store_is_not_ready() {
    let mut roles = Roles::start(&[]).await.unwrap();
    let named = [("router", "confab.v1.Router"), ("store", "confab.v1.Store"), ("presence", "confab.v1.Presence")];
    for (role, url) in roles.grpc.clone() {
        let service = named.iter().find(|(r, _)| *r == role).unwrap().1;
        for name in ["", service] {
            let serving = wait_until(Duration::from_secs(10), || {
                let url = url.clone();
                async move { status(&url, name).await == Some(ServingStatus::Serving) }
            })
            .await;
            assert!(serving.is_ok(), "{role} ({name:?}): {:?}", status(&url, name).await);
        }
    }
    let router = roles.grpc.iter().find(|(r, _)| *r == "router").unwrap().1.clone();
    roles.stop("store").await.unwrap();
    let not_ready = wait_until(Duration::from_secs(10), || {
        let router = router.clone();
        async move { status(&router, "").await == Some(ServingStatus::NotServing) }
    })
    .await;
    assert!(not_ready.is_ok(), "router without its store: {:?}", status(&router, "").await);
}
