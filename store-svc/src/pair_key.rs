//! The key of a dm by its pair of users, the same in every backend: the
//! two user ids, sorted, behind the first one's length in bytes,
//! `"<len>:<a><b>"`. The length says where `a` ends, so no two pairs share
//! a key, whatever the ids hold.

/// The key of the dm between `a` and `b` (in either order).
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
