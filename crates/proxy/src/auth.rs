//! `server.api_keys`: when the list is not empty, every proxy route (the catalog included)
//! needs `Authorization: Bearer <one of the keys>`; the Anthropic routes (`/v1/messages*`)
//! also take the key in `x-api-key`, as Anthropic's clients send it ([`ApiKeys::admits_on`]).
//!
//! The comparison is constant time in the way hale-api's admin token check is (this crate
//! cannot use that one: the api crate depends on this one, not the other way round). Every
//! configured key is compared, whatever matched before it, and each comparison walks the
//! whole configured key with the length check folded into the result, so timing tells neither
//! which key matched nor how much of a guess was right. The scheme name is case-insensitive
//! (RFC 9110 §11.1).
//!
//! The key a client presents to Hale is Hale's credential, not the backend's: when api keys
//! are configured, the client's `Authorization` header is never forwarded upstream (see
//! `hygiene`).

use crate::route::Api;
use hale_core::Secret;
use http::HeaderMap;
use http::HeaderName;
use http::header::AUTHORIZATION;
use subtle::{Choice, ConstantTimeEq};

/// Anthropic's API key header.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The configured keys; empty means the proxy routes are open.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Vec<Box<[u8]>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.keys.len())
            .finish()
    }
}

impl ApiKeys {
    pub fn new(keys: &[Secret]) -> Self {
        Self {
            keys: keys
                .iter()
                .filter(|k| !k.is_empty())
                .map(|k| Box::from(k.expose().as_bytes()))
                .collect(),
        }
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether the request may pass: no keys configured, or a bearer token equal to one.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        self.admits_on(Api::OpenAi, headers)
    }

    /// [`admits`](Self::admits) on a route of `api`: Anthropic's routes also accept the key
    /// in `x-api-key` (when a request has both, the bearer token is the one compared).
    pub fn admits_on(&self, api: Api, headers: &HeaderMap) -> bool {
        if self.keys.is_empty() {
            return true;
        }
        let token = match bearer_token(headers) {
            Some(token) => token,
            None if api == Api::Anthropic => match headers.get(&X_API_KEY) {
                Some(v) if !v.is_empty() => v.as_bytes().trim_ascii(),
                _ => return false,
            },
            None => return false,
        };
        let matched = self
            .keys
            .iter()
            .fold(Choice::from(0), |acc, key| acc | token_matches(token, key));
        bool::from(matched)
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Whether `provided` equals `expected`, in time that depends only on `expected.len()`.
/// (hale-api's admin token check uses this too.)
pub fn token_matches(provided: &[u8], expected: &[u8]) -> Choice {
    let same_len = provided.len().ct_eq(&expected.len());
    let same_bytes = expected
        .iter()
        .enumerate()
        .fold(Choice::from(1), |acc, (i, e)| {
            // Past the end of `provided` the byte is taken as 0; the length check has already
            // made the result false, and the loop length stays that of `expected`.
            let p = provided.get(i).copied().unwrap_or(0);
            acc & p.ct_eq(e)
        });
    same_len & same_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_auth(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn open_without_keys() {
        let keys = ApiKeys::new(&[]);
        assert!(!keys.enabled());
        assert!(keys.admits(&HeaderMap::new()));
        assert!(keys.admits(&with_auth("Bearer anything")));
    }

    #[test]
    fn any_configured_key_admits_and_nothing_else_does() {
        let keys = ApiKeys::new(&[Secret::new("sk-one"), Secret::new("sk-two")]);
        assert!(keys.enabled());
        assert!(keys.admits(&with_auth("Bearer sk-one")));
        assert!(keys.admits(&with_auth("bearer  sk-two ")));
        for bad in [
            "Bearer sk-on",
            "Bearer sk-one!",
            "Bearer sk-three",
            "Basic sk-one",
            "Bearer",
            "sk-one",
        ] {
            let h = HeaderMap::from_iter([(AUTHORIZATION, HeaderValue::from_static(bad))]);
            assert!(!keys.admits(&h), "{bad}");
        }
        assert!(!keys.admits(&HeaderMap::new()));
    }

    #[test]
    fn x_api_key_only_on_anthropic_routes() {
        let keys = ApiKeys::new(&[Secret::new("sk-one")]);
        let h = HeaderMap::from_iter([(X_API_KEY.clone(), HeaderValue::from_static("sk-one"))]);
        assert!(keys.admits_on(Api::Anthropic, &h));
        assert!(!keys.admits_on(Api::OpenAi, &h));
        assert!(!keys.admits_on(Api::Ollama, &h));
        let bad = HeaderMap::from_iter([(X_API_KEY.clone(), HeaderValue::from_static("sk-on"))]);
        assert!(!keys.admits_on(Api::Anthropic, &bad));
        assert!(!keys.admits_on(Api::Anthropic, &HeaderMap::new()));
        assert!(keys.admits_on(Api::Anthropic, &with_auth("Bearer sk-one")));
    }

    #[test]
    fn debug_hides_the_keys() {
        let keys = ApiKeys::new(&[Secret::new("sk-secret")]);
        assert!(!format!("{keys:?}").contains("sk-secret"));
    }
}
