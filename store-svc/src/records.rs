//! What every backend stores the same way: a new chat's record, and the
//! key of a dm by its pair of users.

use confab_api::store::NewChat;
use confab_proto::v1::{Chat, Member};

/// A new chat as stored: every member in the order given, the creator
/// admin, all joined at `now_ms`.
pub(crate) fn new_chat(id: String, new: NewChat, now_ms: i64) -> Chat {
    Chat {
        id,
        kind: new.kind,
        title: new.title,
        members: new
            .member_ids
            .iter()
            .map(|u| Member {
                user_id: u.to_string(),
                role: if *u == new.created_by { "admin" } else { "member" }.to_string(),
                joined_at_ms: now_ms,
            })
            .collect(),
        created_by: new.created_by.into(),
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    }
}

/// The key of the dm between `a` and `b` (in either order): the two user
/// ids, sorted, behind the first one's length in bytes, `"<len>:<a><b>"`.
/// The length says where `a` ends, so no two pairs share a key, whatever
/// the ids hold.
pub(crate) fn key(a: &str, b: &str) -> String {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    format!("{}:{a}{b}", a.len())
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_are_injective_and_symmetric() {
        assert_eq!(key("b", "a"), key("a", "b"));
        assert_ne!(key("v\nw", "z"), key("v", "w\nz"));
        assert_ne!(key("a1:", "b"), key("a", "1:b"));
        assert_ne!(key("ab", "c"), key("a", "bc"));
    }
}
