//! Chat placement: a consistent-hash ring of routers (hashring) with
//! virtual nodes. Edges and routers build it from the same router list, so
//! they agree on every chat's owner.

use hashring::HashRing;
use std::hash::{Hash, Hasher};

/// Virtual nodes per router: enough to keep the spread even for a handful
/// of routers (see the ring tests).
pub const DEFAULT_VNODES: usize = 160;

#[derive(Clone, Debug, PartialEq, Eq)]
struct VNode {
    router: usize,
    index: usize,
    addr: std::sync::Arc<str>,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Hash by address and index only, so the placement depends on the
        // set of routers and not on the order they were listed in.
        self.addr.hash(state);
        self.index.hash(state);
    }
}

/// The routers, by the address edges dial (`http://host:port`).
#[derive(Clone)]
pub struct Ring {
    routers: Vec<String>,
    ring: HashRing<VNode>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("routers", &self.routers).finish()
    }
}

impl Ring {
    pub fn new(routers: impl IntoIterator<Item = String>) -> Self {
        Self::with_vnodes(routers, DEFAULT_VNODES)
    }

    pub fn with_vnodes(routers: impl IntoIterator<Item = String>, vnodes: usize) -> Self {
        let mut routers: Vec<String> = routers.into_iter().collect();
        routers.sort();
        routers.dedup();
        let mut ring = HashRing::new();
        for (router, addr) in routers.iter().enumerate() {
            let addr: std::sync::Arc<str> = addr.as_str().into();
            for index in 0..vnodes {
                ring.add(VNode { router, index, addr: addr.clone() });
            }
        }
        Self { routers, ring }
    }

    /// The router that owns `chat_id`, or `None` for an empty ring.
    pub fn owner(&self, chat_id: &str) -> Option<&str> {
        self.ring.get(&chat_id).map(|v| self.routers[v.router].as_str())
    }

    pub fn routers(&self) -> &[String] {
        &self.routers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_ignores_listing_order() {
        let a = Ring::new(["http://r1".to_string(), "http://r2".into(), "http://r3".into()]);
        let b = Ring::new(["http://r3".to_string(), "http://r1".into(), "http://r2".into()]);
        for i in 0..1000 {
            let chat = format!("chat-{i}");
            assert_eq!(a.owner(&chat), b.owner(&chat));
        }
    }

    #[test]
    fn every_router_owns_chats() {
        let routers: Vec<String> = (0..3).map(|i| format!("http://r{i}")).collect();
        let ring = Ring::new(routers.clone());
        let mut counts = std::collections::HashMap::new();
        for i in 0..3000 {
            *counts.entry(ring.owner(&format!("chat-{i}")).unwrap().to_string()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(Ring::new(Vec::<String>::new()).owner("x").is_none());
    }
}
