//! Presence as pure logic: sessions, chosen status, the offline grace
//! window, the update throttle and edge leases. Every method takes the
//! current time, so the rules are tested without sleeping; the service
//! calls them under one lock and delivers what they return.

use std::collections::{HashMap, HashSet};

/// Timing rules (CONTRACT §5, §9).
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// A user goes offline this long after the last session closes.
    pub offline_grace_ms: i64,
    /// At most one update per user per this long; the last state always goes out.
    pub update_interval_ms: i64,
    /// An edge silent this long loses its sessions.
    pub lease_ms: i64,
}

impl Default for Windows {
    fn default() -> Self {
        Self { offline_grace_ms: 5000, update_interval_ms: 2000, lease_ms: 30_000 }
    }
}

/// A state as someone sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub user_id: String,
    pub status: &'static str,
    pub last_seen_ms: Option<i64>,
    /// When this state began.
    pub since_ms: i64,
}

#[derive(Default)]
struct User {
    sessions: HashSet<(String, String)>,
    /// online, away, busy or invisible.
    chosen: Option<&'static str>,
    /// When the last session closed, while the grace window runs.
    closing_at: Option<i64>,
    /// The last time the user was seen visible.
    last_visible_ms: Option<i64>,
    /// What others see now, and since when.
    shown: &'static str,
    shown_since: i64,
    /// What watchers were last told, and when.
    published: Option<&'static str>,
    published_at: Option<i64>,
}

impl User {
    fn chosen(&self) -> &'static str {
        self.chosen.unwrap_or("online")
    }

    /// What others should see now.
    fn visible(&self) -> &'static str {
        if self.sessions.is_empty() && self.closing_at.is_none() {
            return "offline";
        }
        match self.chosen() {
            "invisible" => "offline",
            s => s,
        }
    }

    /// Whether the clock still has something to do for this user: a grace
    /// window running, an update held back, or an offline not yet shown.
    fn pending(&self) -> bool {
        self.closing_at.is_some()
            || self.published != Some(self.visible())
            || (self.sessions.is_empty() && self.shown != "offline")
    }
}

#[derive(Default)]
pub struct Hub {
    pub windows: Windows,
    users: HashMap<String, User>,
    /// Users the clock has something to do for (see `User::pending`): a
    /// tick looks at these, not at every user.
    pending: HashSet<String>,
    /// Edge -> last heartbeat.
    leases: HashMap<String, i64>,
}

pub fn parse_status(s: &str) -> Option<&'static str> {
    ["online", "away", "busy", "invisible"].into_iter().find(|k| *k == s)
}

impl Hub {
    pub fn new(windows: Windows) -> Self {
        Self { windows, ..Self::default() }
    }

    fn user(&mut self, id: &str) -> &mut User {
        self.users.entry(id.to_string()).or_insert_with(|| User { shown: "offline", ..User::default() })
    }

    pub fn heartbeat(&mut self, edge: &str, now: i64) {
        self.leases.insert(edge.to_string(), now);
    }

    pub fn open(&mut self, user: &str, edge: &str, session: &str, now: i64) -> Vec<Seen> {
        self.heartbeat(edge, now);
        let u = self.user(user);
        u.sessions.insert((edge.to_string(), session.to_string()));
        u.closing_at = None;
        self.changed(user, now)
    }

    pub fn close(&mut self, user: &str, edge: &str, session: &str, now: i64) -> Vec<Seen> {
        self.heartbeat(edge, now);
        let u = self.user(user);
        if u.sessions.remove(&(edge.to_string(), session.to_string())) && u.sessions.is_empty() {
            u.closing_at = Some(now);
        }
        self.changed(user, now)
    }

    pub fn set_status(&mut self, user: &str, status: &'static str, now: i64) -> Vec<Seen> {
        self.user(user).chosen = Some(status);
        self.changed(user, now)
    }

    /// The state of `user` as `viewer` sees it.
    pub fn seen_by(&self, user: &str, viewer: &str, now: i64) -> Seen {
        let Some(u) = self.users.get(user) else {
            return Seen { user_id: user.to_string(), status: "offline", last_seen_ms: None, since_ms: now };
        };
        let own = user == viewer && (!u.sessions.is_empty() || u.closing_at.is_some());
        let status = if own { u.chosen() } else { u.shown };
        // Shown online (or away, busy): seen now. Otherwise: last seen visible.
        let last_seen_ms = if u.shown != "offline" { Some(now) } else { u.last_visible_ms };
        Seen { user_id: user.to_string(), status, last_seen_ms, since_ms: u.shown_since }
    }

    /// Re-evaluates a user after a change; returns what to publish now.
    fn changed(&mut self, user: &str, now: i64) -> Vec<Seen> {
        let interval = self.windows.update_interval_ms;
        let u = self.user(user);
        let visible = u.visible();
        if visible != u.shown {
            // Leaving a visible state: remember when (the close time for an
            // offline after the grace window).
            let began = if visible == "offline" { u.closing_at.unwrap_or(now) } else { now };
            if u.shown != "offline" || visible == "offline" {
                u.last_visible_ms = Some(began);
            }
            u.shown = visible;
            u.shown_since = began;
        }
        if u.shown != "offline" {
            u.last_visible_ms = Some(now);
        }
        let due = u.published != Some(u.shown) && u.published_at.is_none_or(|t| now - t >= interval);
        if !due {
            self.mark(user);
            return Vec::new();
        }
        u.published = Some(u.shown);
        u.published_at = Some(now);
        let out = vec![self.seen_by(user, "", now)];
        self.mark(user);
        out
    }

    /// Leaves `user` to the clock if it still has something to do for it.
    fn mark(&mut self, user: &str) {
        if self.users.get(user).is_some_and(User::pending) && !self.pending.contains(user) {
            self.pending.insert(user.to_string());
        }
    }

    /// Runs the clocks: grace windows that ended, throttled updates whose
    /// interval passed, edges whose lease lapsed.
    pub fn tick(&mut self, now: i64) -> Vec<Seen> {
        let dead: Vec<String> =
            self.leases.iter().filter(|(_, t)| now - **t >= self.windows.lease_ms).map(|(e, _)| e.clone()).collect();
        for edge in &dead {
            self.leases.remove(edge);
            for (id, u) in self.users.iter_mut() {
                let before = u.sessions.len();
                u.sessions.retain(|(e, _)| e != edge);
                if before > 0 && u.sessions.is_empty() {
                    // A dead edge's users are offline at once (the lease was the grace).
                    u.closing_at = None;
                    u.last_visible_ms = Some(now);
                    self.pending.insert(id.clone());
                }
            }
        }
        let grace = self.windows.offline_grace_ms;
        let mut out = Vec::new();
        let ids: Vec<String> = self
            .pending
            .iter()
            .filter(|id| {
                self.users.get(*id).is_some_and(|u| {
                    u.closing_at.is_some_and(|t| now - t >= grace)
                        || u.published != Some(u.visible())
                        || (u.sessions.is_empty() && u.closing_at.is_none() && u.shown != "offline")
                })
            })
            .cloned()
            .collect();
        for id in ids {
            let u = self.user(&id);
            if u.closing_at.is_some_and(|t| now - t >= grace) {
                // Seen until the moment the last socket closed.
                let closed = u.closing_at.take().unwrap_or(now);
                u.last_visible_ms = Some(closed);
                if u.shown != "offline" {
                    u.shown = "offline";
                    u.shown_since = closed;
                }
            }
            out.extend(self.changed(&id, now));
        }
        let users = &self.users;
        self.pending.retain(|id| users.get(id).is_some_and(User::pending));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(Windows { offline_grace_ms: 5000, update_interval_ms: 2000, lease_ms: 30_000 })
    }

    fn statuses(v: &[Seen]) -> Vec<(&str, &str)> {
        v.iter().map(|s| (s.user_id.as_str(), s.status)).collect()
    }

    #[test]
    fn online_with_any_session_offline_after_the_grace_window() {
        let mut h = hub();
        assert_eq!(statuses(&h.open("u", "e1", "s1", 0)), vec![("u", "online")]);
        assert!(h.open("u", "e2", "s2", 100).is_empty());
        assert!(h.close("u", "e1", "s1", 200).is_empty());
        assert!(h.close("u", "e2", "s2", 3000).is_empty());
        assert!(h.tick(7999).is_empty(), "still inside the grace window");
        let off = h.tick(8000);
        assert_eq!(statuses(&off), vec![("u", "offline")]);
        // The offline state began, and the user was last seen, at the close.
        assert_eq!((off[0].since_ms, off[0].last_seen_ms), (3000, Some(3000)));
    }

    #[test]
    fn a_reconnect_inside_the_grace_window_publishes_nothing() {
        let mut h = hub();
        h.open("u", "e1", "s1", 0);
        h.close("u", "e1", "s1", 10_000);
        assert!(h.open("u", "e1", "s2", 12_000).is_empty());
        assert!(h.tick(20_000).is_empty());
        assert_eq!(h.seen_by("u", "v", 20_000).status, "online");
    }

    #[test]
    fn updates_are_throttled_and_the_last_state_always_goes_out() {
        let mut h = hub();
        h.open("u", "e1", "s1", 0);
        assert_eq!(statuses(&h.set_status("u", "away", 2000)), vec![("u", "away")]);
        assert!(h.set_status("u", "busy", 2100).is_empty());
        assert!(h.set_status("u", "online", 2200).is_empty());
        assert!(h.set_status("u", "busy", 2300).is_empty());
        assert!(h.tick(3999).is_empty());
        assert_eq!(h.pending.len(), 1, "the held update is the clock's");
        assert_eq!(statuses(&h.tick(4000)), vec![("u", "busy")]);
        assert!(h.pending.is_empty(), "nothing left for the clock");
        // Back to a state already published: nothing to send.
        assert!(h.tick(9000).is_empty());
    }

    #[test]
    fn the_clock_looks_only_at_users_it_has_something_to_do_for() {
        let mut h = hub();
        for i in 0..1000 {
            h.open(&format!("u{i}"), "e1", "s", 0);
        }
        assert!(h.pending.is_empty(), "every open was published at once");
        h.close("u7", "e1", "s", 100);
        assert_eq!(h.pending.iter().collect::<Vec<_>>(), ["u7"]);
        assert!(h.tick(200).is_empty());
        assert_eq!(statuses(&h.tick(5100)), vec![("u7", "offline")]);
        assert!(h.pending.is_empty());
    }

    #[test]
    fn invisible_shows_offline_to_others_and_as_set_to_the_user() {
        let mut h = hub();
        h.open("u", "e1", "s1", 0);
        assert_eq!(statuses(&h.set_status("u", "invisible", 5000)), vec![("u", "offline")]);
        assert_eq!(h.seen_by("u", "v", 6000).status, "offline");
        assert_eq!(h.seen_by("u", "v", 6000).last_seen_ms, Some(5000));
        assert_eq!(h.seen_by("u", "u", 6000).status, "invisible");
        assert_eq!(h.seen_by("nobody", "v", 6000).last_seen_ms, None);
    }

    #[test]
    fn a_silent_edge_takes_its_users_offline() {
        let mut h = hub();
        h.open("u", "dead", "s1", 0);
        h.open("w", "alive", "s2", 0);
        h.heartbeat("alive", 20_000);
        assert!(h.tick(29_999).is_empty());
        assert_eq!(statuses(&h.tick(30_000)), vec![("u", "offline")]);
        assert!(h.pending.is_empty());
        assert_eq!(h.seen_by("w", "v", 30_000).status, "online");
    }
}
