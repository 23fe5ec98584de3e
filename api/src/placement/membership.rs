//! Which routers are alive, and so the ring chats are placed on.
//!
//! The configured routers (a static list, or a DNS name re-resolved
//! periodically) are probed with `Router/Ping`; one that has not answered
//! for the detection window leaves the ring, and comes back when it answers
//! again. Edges apply the same rule to their router streams, so both sides
//! converge on the same ring; while they disagree, a router refuses chats it
//! does not own (NOT_OWNER) and the store's ownership epochs keep any two
//! routers from writing one chat.

use super::Ring;
use confab_common::Shutdown;
use confab_proto::v1 as pb;
use confab_proto::v1::router_client::RouterClient;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// Where the router list comes from.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// Fixed addresses (`http://host:port`).
    Static(Vec<String>),
    /// A DNS name (a Kubernetes headless Service) and the port routers
    /// listen on; every address it resolves to is a router.
    Dns { name: String, port: u16 },
}

impl Discovery {
    /// `dns:name:port` selects DNS; anything else is a static list.
    pub fn parse(routers: &[String]) -> Self {
        if let [one] = routers {
            if let Some(rest) = one.strip_prefix("dns:") {
                if let Some((name, port)) = rest.rsplit_once(':') {
                    if let Ok(port) = port.parse() {
                        return Self::Dns { name: name.to_string(), port };
                    }
                }
            }
        }
        Self::Static(routers.to_vec())
    }

    /// The current router addresses.
    pub async fn resolve(&self) -> Vec<String> {
        match self {
            Self::Static(list) => list.clone(),
            Self::Dns { name, port } => match tokio::net::lookup_host((name.as_str(), *port)).await {
                Ok(addrs) => {
                    let mut out: Vec<String> = addrs.map(|a| format!("http://{a}")).collect();
                    out.sort();
                    out.dedup();
                    out
                }
                Err(e) => {
                    tracing::warn!(name, error = %e, "DNS lookup failed");
                    Vec::new()
                }
            },
        }
    }
}

/// Timing of failure detection.
#[derive(Debug, Clone, Copy)]
pub struct Detection {
    /// How often peers are probed (and DNS re-resolved).
    pub probe: Duration,
    /// A router silent this long leaves the ring.
    pub window: Duration,
}

struct Peer {
    client: RouterClient<Channel>,
    last_ok: Instant,
}

/// The live ring as this router sees it.
pub struct Membership {
    me: String,
    ring: RwLock<Arc<Ring>>,
}

impl Membership {
    pub fn new(me: String, initial: Vec<String>) -> Arc<Self> {
        let mut all = initial;
        if !all.contains(&me) {
            all.push(me.clone());
        }
        Arc::new(Self { me, ring: RwLock::new(Arc::new(Ring::new(all))) })
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Probes peers until shutdown, keeping the ring to the live ones.
    pub async fn run(self: Arc<Self>, discovery: Discovery, detection: Detection, shutdown: Shutdown) {
        let mut peers: HashMap<String, Peer> = HashMap::new();
        let mut tick = tokio::time::interval(detection.probe);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.triggered() => return,
            }
            let configured = discovery.resolve().await;
            peers.retain(|addr, _| configured.contains(addr));
            for addr in &configured {
                if *addr == self.me || peers.contains_key(addr) {
                    continue;
                }
                let Ok(endpoint) = Endpoint::from_shared(addr.clone()) else { continue };
                let channel = endpoint.connect_timeout(detection.probe).timeout(detection.probe).connect_lazy();
                // A new peer counts as alive for one window, so a cluster that
                // starts together does not shuffle chats while it boots.
                peers.insert(addr.clone(), Peer { client: RouterClient::new(channel), last_ok: Instant::now() });
            }
            let probes = peers.iter().map(|(addr, p)| {
                let mut client = p.client.clone();
                let addr = addr.clone();
                async move { (addr, client.ping(pb::Empty {}).await.is_ok()) }
            });
            for (addr, ok) in futures::future::join_all(probes).await {
                if ok {
                    if let Some(p) = peers.get_mut(&addr) {
                        p.last_ok = Instant::now();
                    }
                }
            }
            let mut live: Vec<String> =
                peers.iter().filter(|(_, p)| p.last_ok.elapsed() < detection.window).map(|(a, _)| a.clone()).collect();
            live.push(self.me.clone());
            if let Some(ring) = self.ring().changed(live) {
                tracing::info!(routers = ?ring.routers(), "router ring changed");
                *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn discovery_from_a_list_or_dns() {
        let list = vec!["http://a:1".to_string(), "http://b:2".to_string()];
        assert!(matches!(Discovery::parse(&list), Discovery::Static(l) if l == list));
        let dns = Discovery::parse(&["dns:localhost:7002".to_string()]);
        assert!(matches!(&dns, Discovery::Dns { name, port: 7002 } if name == "localhost"));
        let resolved = dns.resolve().await;
        assert!(resolved.contains(&"http://127.0.0.1:7002".to_string()), "{resolved:?}");
        let missing = Discovery::parse(&["dns:no-such-host.invalid:7002".to_string()]);
        assert!(missing.resolve().await.is_empty());
    }
}
