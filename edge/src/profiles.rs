//! The profiles this edge saved lately: a reconnect storm of the same
//! tokens need not queue one store write per CONNECT (CONTRACT §10.3 keeps
//! the profile of each user's most recent token).
//!
//! A profile this edge saved less than [`FRESH`] ago is not saved again.
//! The cost: a user whose token changed their profile on another edge and
//! then changed it back here within that minute keeps the other edge's
//! for up to a minute. The map is bounded; when full it starts over.

use confab_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a save stands for the same user and profile.
pub const FRESH: Duration = Duration::from_secs(60);
/// Users remembered at most.
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct SavedProfiles {
    saved: Mutex<HashMap<String, (pb::Profile, Instant)>>,
}

impl SavedProfiles {
    /// Whether `profile` must be saved for `user` at `now`; if so, it is
    /// remembered as saved (see [`SavedProfiles::forget`] for a save that failed).
    pub fn claim(&self, user: &str, profile: &pb::Profile, now: Instant) -> bool {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((p, at)) = saved.get(user) {
            if p == profile && now.saturating_duration_since(*at) < FRESH {
                return false;
            }
        }
        if saved.len() >= CAPACITY && !saved.contains_key(user) {
            saved.clear();
        }
        saved.insert(user.to_string(), (profile.clone(), now));
        true
    }

    /// Saves that did not reach the store: the next token saves again.
    pub fn forget<'a>(&self, users: impl IntoIterator<Item = &'a str>) {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        for user in users {
            saved.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> pb::Profile {
        pb::Profile { name: Some(name.into()), avatar_url: None }
    }

    #[test]
    fn the_same_profile_is_saved_once_a_minute() {
        let cache = SavedProfiles::default();
        let t0 = Instant::now();
        assert!(cache.claim("alice", &profile("Alice"), t0));
        assert!(!cache.claim("alice", &profile("Alice"), t0 + Duration::from_secs(1)), "a reconnect");
        assert!(cache.claim("bob", &profile("Alice"), t0), "another user");
        assert!(cache.claim("alice", &profile("Alice B."), t0 + Duration::from_secs(2)), "a changed profile");
        assert!(!cache.claim("alice", &profile("Alice B."), t0 + Duration::from_secs(3)));
        assert!(cache.claim("alice", &profile("Alice B."), t0 + Duration::from_secs(2) + FRESH), "a minute on");
    }

    #[test]
    fn a_failed_save_is_forgotten_and_the_map_stays_bounded() {
        let cache = SavedProfiles::default();
        let t0 = Instant::now();
        assert!(cache.claim("alice", &profile("Alice"), t0));
        cache.forget(["alice"]);
        assert!(cache.claim("alice", &profile("Alice"), t0), "saved again after a failure");
        for i in 0..CAPACITY + 10 {
            cache.claim(&format!("u{i}"), &profile("x"), t0);
        }
        assert!(cache.saved.lock().unwrap().len() <= CAPACITY);
    }
}
