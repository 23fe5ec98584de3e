//! The router's standard gRPC health service (`grpc.health.v1`): SERVING
//! while the router is a member of the ring it places chats by and its
//! store-svc answers SERVING; NOT_SERVING otherwise, and from the moment it
//! starts shutting down, so that a readiness probe takes it out of
//! rotation before it stops.

use crate::RouterService;
use confab_api::placement::Membership;
use confab_common::Shutdown;
use confab_proto::v1::router_server::RouterServer;
use std::sync::Arc;
use std::time::Duration;
use tonic::server::NamedService;
use tonic_health::pb::health_check_response::ServingStatus as Answer;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// store-svc's name in its health service.
const STORE: &str = "confab.v1.Store";

/// Whether store-svc at the other end of `client` says it is SERVING,
/// within `deadline`.
async fn store_serving(client: &mut HealthClient<tonic::transport::Channel>, deadline: Duration) -> bool {
    let check = client.check(HealthCheckRequest { service: STORE.into() });
    matches!(
        tokio::time::timeout(deadline, check).await,
        Ok(Ok(r)) if r.get_ref().status() == Answer::Serving
    )
}

/// Keeps `reporter` (for the whole server and the Router service) true to
/// the router's state, checking every `every`, until `shutdown`.
pub(crate) async fn report(
    reporter: HealthReporter,
    membership: Arc<Membership>,
    store_url: String,
    every: Duration,
    shutdown: Shutdown,
) {
    let mut store = match tonic::transport::Endpoint::from_shared(store_url) {
        Ok(endpoint) => HealthClient::new(endpoint.connect_timeout(every).connect_lazy()),
        Err(_) => return, // run() checked the URL already
    };
    let set = |status: ServingStatus| {
        let reporter = reporter.clone();
        async move {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(<RouterServer<RouterService> as NamedService>::NAME, status).await;
        }
    };
    let mut last = None;
    loop {
        let member = membership.ring().routers().iter().any(|r| r == membership.me());
        let ready = member && store_serving(&mut store, every.max(Duration::from_millis(100))).await;
        let status = if ready && !shutdown.is_triggered() { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            set(status).await;
            tracing::info!(ready = status == ServingStatus::Serving, member, "router readiness");
            last = Some(status);
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.triggered() => {
                set(ServingStatus::NotServing).await;
                return;
            }
        }
    }
}
