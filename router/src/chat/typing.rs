//! Typing indicators: debounced starts, explicit stops and expiry.

use super::{ChatSettings, ChatState};
use confab_proto::v1 as pb;
use confab_proto::v1::delivery::Event;
use tokio::time::Instant;

pub(super) struct Typing {
    last_broadcast: Instant,
    pub(super) expires: Instant,
}

impl ChatState {
    /// Typing (CONTRACT §5, §8.12): non-members are ignored silently; a start
    /// within the debounce window is not re-broadcast but renews the expiry.
    pub(super) fn typing(&mut self, user: &str, start: bool, now: Instant, settings: &ChatSettings) {
        if !self.is_member(user) {
            return;
        }
        if !start {
            if self.typing.remove(user).is_some() {
                self.send_all(typing_update(user, false));
            }
            return;
        }
        let expires = now + settings.typing_ttl;
        match self.typing.get_mut(user) {
            Some(t) if now < t.last_broadcast + settings.typing_debounce => t.expires = expires,
            _ => {
                self.typing.insert(user.to_string(), Typing { last_broadcast: now, expires });
                self.send_all(typing_update(user, true));
            }
        }
    }

    pub(super) fn expire_typing(&mut self, now: Instant) {
        let expired: Vec<String> =
            self.typing.iter().filter(|(_, t)| t.expires <= now).map(|(u, _)| u.clone()).collect();
        for user in expired {
            self.typing.remove(&user);
            self.send_all(typing_update(&user, false));
        }
    }
}

/// A start or stop of `user`, which the edge shows to everyone but `user`.
fn typing_update(user: &str, start: bool) -> Event {
    Event::TypingUpdate(pb::TypingUpdate { user_id: user.to_string(), start })
}
