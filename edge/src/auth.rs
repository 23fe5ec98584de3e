//! JWT checks (CONTRACT §2, §8.8): which token counts, and whether it is good:
//! signed with a configured key, `exp` in the future, no `crit` header, and a
//! user id that follows [`UserId::check`].

use confab_common::UserId;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a token was refused; the `reason` of the CONNECT_ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing_token")]
    Missing,
    #[error("invalid_token")]
    Invalid,
    #[error("expired_token")]
    Expired,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Invalid => "invalid_token",
            Self::Expired => "expired_token",
        }
    }
}

/// Who a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub name: Option<String>,
    /// The `picture` claim, kept only when it is an http(s) URL (CONTRACT
    /// §10.2).
    pub picture: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
}

impl Identity {
    /// What messages this token sends carry as their sender's profile.
    pub fn profile(&self) -> confab_proto::v1::Profile {
        confab_proto::v1::Profile { name: self.name.clone(), avatar_url: self.picture.clone() }
    }
}

#[derive(Debug, Deserialize, Serialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, rename = "userId", skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    picture: Option<Value>,
    exp: i64,
}

/// Which keys and claims tokens are checked against (CONTRACT §2, §8.8).
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// RS256 or ES256 public key (PEM); the algorithm follows the key.
    pub public_key_pem: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Leeway for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// Verifies tokens: the header's `alg` must be one configured, with its key.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<Algorithm> = self.keys.iter().map(|(a, _)| *a).collect();
        f.debug_struct("Verifier").field("algorithms", &algs).finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl Verifier {
    pub fn new(settings: &AuthSettings) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = settings.secret.as_deref().filter(|s| !s.is_empty()) {
            keys.push((Algorithm::HS256, DecodingKey::from_secret(secret.as_bytes())));
        }
        if let Some(pem) = &settings.public_key_pem {
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                (Algorithm::RS256, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                (Algorithm::ES256, k)
            } else {
                return Err(KeyError("the public key is neither an RSA nor a P-256 PEM key".into()));
            };
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError("no JWT key: set a secret or a public key".into()));
        }
        let mut validation = Validation::new(keys[0].0);
        validation.leeway = settings.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &settings.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &settings.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self { keys, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        // RFC 7515 §4.1.11: a `crit` header names extensions the verifier
        // must understand or refuse the token. We understand none.
        if header.crit.is_some() {
            return Err(AuthError::Invalid);
        }
        let (alg, key) = self.keys.iter().find(|(a, _)| *a == header.alg).ok_or(AuthError::Invalid)?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![*alg];
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        let c = data.claims;
        // The library lets `exp == now` through; a token is good only
        // before its `exp` (plus the leeway).
        let now = confab_common::time::now_ms() / 1000;
        if c.exp.saturating_add(i64::try_from(self.validation.leeway).unwrap_or(i64::MAX)) <= now {
            return Err(AuthError::Expired);
        }
        let user_id =
            c.sub.filter(|s| !s.is_empty()).or(c.user_id.filter(|s| !s.is_empty())).ok_or(AuthError::Invalid)?;
        UserId::check(&user_id).map_err(|_| AuthError::Invalid)?;
        let picture = match c.picture {
            Some(Value::String(url)) if crate::validate::is_web_url(&url) => Some(url),
            _ => None,
        };
        Ok(Identity { user_id, name: c.name, picture, expires_at: c.exp })
    }
}

/// Mints an HS256 token (for `confab token` and tests).
pub fn mint_hs256(secret: &[u8], user_id: &str, name: Option<&str>, picture: Option<&str>, ttl_secs: i64) -> String {
    let claims = Claims {
        sub: Some(user_id.to_string()),
        user_id: None,
        name: name.map(str::to_string),
        picture: picture.map(|p| Value::String(p.to_string())),
        exp: confab_common::time::now_ms() / 1000 + ttl_secs,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).unwrap_or_default()
}

/// Picks the one token that counts: the CONNECT auth's `token`, else the
/// `Authorization: Bearer` header, else the `token` query parameter. A token
/// field that is present but not a string counts as an invalid token.
pub fn pick_token<'a>(
    auth: Option<&'a Value>,
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Result<std::borrow::Cow<'a, str>, AuthError> {
    if let Some(v) = auth.and_then(|a| a.get("token")) {
        return match v {
            Value::String(s) => Ok(s.as_str().into()),
            Value::Null => next(authorization, query),
            _ => Err(AuthError::Invalid),
        };
    }
    next(authorization, query)
}

fn next<'a>(authorization: Option<&'a str>, query: Option<&'a str>) -> Result<std::borrow::Cow<'a, str>, AuthError> {
    if let Some(h) = authorization {
        return match h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")) {
            Some(t) => Ok(t.trim().into()),
            None => Err(AuthError::Invalid),
        };
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("token=") {
                return Ok(percent_decode(v).into());
            }
        }
    }
    Err(AuthError::Missing)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    #[test]
    fn verifies_good_tokens_and_names_the_reason_for_bad_ones() {
        let settings = AuthSettings { secret: Some("test-secret".into()), ..AuthSettings::default() };
        let v = Verifier::new(&settings).unwrap();
        let good = mint_hs256(SECRET, "alice", Some("Alice"), None, 60);
        let id = v.verify(&good).unwrap();
        assert_eq!((id.user_id.as_str(), id.name.as_deref()), ("alice", Some("Alice")));
        assert_eq!(id.picture, None);
        // The picture claim is kept only as an http(s) URL (CONTRACT §10.2).
        let pictured = mint_hs256(SECRET, "alice", None, Some("https://cdn.example/a.png"), 60);
        assert_eq!(v.verify(&pictured).unwrap().picture.as_deref(), Some("https://cdn.example/a.png"));
        for bad in ["javascript:alert(1)", "data:image/png;base64,AAAA", "a.png"] {
            assert_eq!(v.verify(&mint_hs256(SECRET, "alice", None, Some(bad), 60)).unwrap().picture, None, "{bad}");
        }
        let numeric = hs256(
            &Header::new(Algorithm::HS256),
            &json!({ "sub": "alice", "picture": 7, "exp": confab_common::time::now_ms() / 1000 + 60 }),
        );
        assert_eq!(v.verify(&numeric).unwrap().picture, None, "a picture that is not a string is ignored");
        assert_eq!(v.verify(&mint_hs256(SECRET, "alice", None, None, -10)), Err(AuthError::Expired));
        assert_eq!(v.verify(&mint_hs256(b"other", "alice", None, None, 60)), Err(AuthError::Invalid));
        assert_eq!(v.verify("garbage"), Err(AuthError::Invalid));
        // alg: none, unsigned.
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, confab_common::time::now_ms() / 1000 + 60))
        );
        assert_eq!(v.verify(&none), Err(AuthError::Invalid));
    }

    fn hs256(header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn verifier(leeway_secs: u64) -> Verifier {
        Verifier::new(&AuthSettings { secret: Some("test-secret".into()), leeway_secs, ..AuthSettings::default() })
            .unwrap()
    }

    #[test]
    fn a_token_expires_at_its_exp_not_a_second_later() {
        let now = confab_common::time::now_ms() / 1000;
        let header = Header::new(Algorithm::HS256);
        let at = |exp: i64| hs256(&header, &json!({ "sub": "alice", "exp": exp }));
        assert_eq!(verifier(0).verify(&at(now)), Err(AuthError::Expired));
        assert_eq!(verifier(0).verify(&at(now - 1)), Err(AuthError::Expired));
        assert!(verifier(0).verify(&at(now + 60)).is_ok());
        // The leeway moves the end by as much, and no further.
        assert!(verifier(30).verify(&at(now - 10)).is_ok());
        assert_eq!(verifier(30).verify(&at(now - 30)), Err(AuthError::Expired));
    }

    #[test]
    fn a_critical_header_is_refused() {
        let exp = confab_common::time::now_ms() / 1000 + 60;
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["b64".into()]);
        assert_eq!(
            verifier(0).verify(&hs256(&header, &json!({ "sub": "alice", "exp": exp }))),
            Err(AuthError::Invalid)
        );
        header.crit = Some(vec![]);
        assert_eq!(
            verifier(0).verify(&hs256(&header, &json!({ "sub": "alice", "exp": exp }))),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn the_user_id_must_follow_the_rule() {
        let exp = confab_common::time::now_ms() / 1000 + 60;
        let header = Header::new(Algorithm::HS256);
        let v = verifier(0);
        for bad in ["w\nz", "a\0", " ", "\t", " alice", "alice ", &"x".repeat(129)] {
            let token = hs256(&header, &json!({ "sub": bad, "exp": exp }));
            assert_eq!(v.verify(&token), Err(AuthError::Invalid), "{bad:?}");
            let token = hs256(&header, &json!({ "userId": bad, "exp": exp }));
            assert_eq!(v.verify(&token), Err(AuthError::Invalid), "{bad:?}");
        }
        let token = hs256(&header, &json!({ "sub": "Zoë Smith", "exp": exp }));
        assert_eq!(v.verify(&token).unwrap().user_id, "Zoë Smith");
    }

    fn b64(s: &str) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn the_first_token_present_counts() {
        let auth = json!({"token": "a"});
        assert_eq!(pick_token(Some(&auth), Some("Bearer b"), Some("token=c")).unwrap(), "a");
        assert_eq!(pick_token(Some(&json!({})), Some("Bearer b"), Some("token=c")).unwrap(), "b");
        assert_eq!(pick_token(None, None, Some("x=1&token=c%2Bd")).unwrap(), "c+d");
        assert_eq!(pick_token(None, None, Some("x=1")), Err(AuthError::Missing));
        assert_eq!(pick_token(Some(&json!({"token": 5})), None, None), Err(AuthError::Invalid));
        assert_eq!(pick_token(None, Some("Basic xyz"), None), Err(AuthError::Invalid));
    }
}
