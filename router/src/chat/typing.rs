//! Typing indicators: debounced starts, explicit stops and expiry.

use super::{ChatSettings, ChatState};
use crate::events;
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
                self.broadcast(events::typing(&self.chat_id, user, false), Some(user));
            }
            return;
        }
        let expires = now + settings.typing_ttl;
        match self.typing.get_mut(user) {
            Some(t) if now < t.last_broadcast + settings.typing_debounce => t.expires = expires,
            _ => {
                self.typing.insert(user.to_string(), Typing { last_broadcast: now, expires });
                self.broadcast(events::typing(&self.chat_id, user, true), Some(user));
            }
        }
    }

    pub(super) fn expire_typing(&mut self, now: Instant) {
        let expired: Vec<String> =
            self.typing.iter().filter(|(_, t)| t.expires <= now).map(|(u, _)| u.clone()).collect();
        for user in expired {
            self.typing.remove(&user);
            self.broadcast(events::typing(&self.chat_id, &user, false), Some(&user));
        }
    }
}
