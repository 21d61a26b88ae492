//! Header hygiene between the client and a backend: what is forwarded, what is replaced, what
//! Hale adds, and the request id.
//!
//! Nothing is removed from a header map here: the rules are filters applied while a head is
//! written (upstream, `upstream::head::encode_request`) or built (downstream,
//! `upstream::head::parse_response`), so a request costs no hash-table deletions.
//!
//! Upstream (client → backend):
//! - hop-by-hop headers (RFC 9110 §7.6.1: `Connection`, `Keep-Alive`, `Proxy-Connection`,
//!   `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authorization`,
//!   `Proxy-Authenticate`, and every header `Connection` names) are not forwarded, nor are
//!   `Host` (the backend's own authority is written), `Content-Length` (written for the
//!   buffered body) and `Expect` (Hale already read the body);
//! - `Authorization`: the endpoint's `api_key` replaces whatever the client sent; when the
//!   endpoint has none, the client's header passes through — unless `server.api_keys` is set,
//!   in which case that header held Hale's own key and is dropped, so a gateway key never
//!   reaches a backend; Anthropic's `x-api-key` follows the same rule;
//! - `x-request-id` carries the request id (the client's, or one Hale made) and `x-hale-pod`
//!   names this replica, so backend logs can be matched to Hale's.
//!
//! Downstream (backend → client), hop-by-hop headers are not passed on (Hale's server side
//! frames the body itself), `x-hale-endpoint` names the backend that answered and
//! `x-request-id` repeats the request id (replacing any the backend sent).
//!
//! Request ids Hale makes are 32 hex digits: a random 64-bit prefix drawn once per thread and
//! a per-thread 64-bit counter, so they are unique without a random draw per request and
//! without a counter shared by every core. They are cut from a per-thread 4 KiB block, so
//! making one allocates nothing most of the time. A client's own id is kept when it is at most 128
//! visible ASCII characters.

use bytes::BytesMut;
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::cell::{Cell, RefCell};

/// The request id header, read from clients and sent both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The backend that served a response.
pub static X_HALE_ENDPOINT: HeaderName = HeaderName::from_static("x-hale-endpoint");
/// The replica that forwarded a request.
pub static X_HALE_POD: HeaderName = HeaderName::from_static("x-hale-pod");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The longest client request id that is kept as is.
const MAX_CLIENT_REQUEST_ID: usize = 128;
/// The length of the ids Hale makes.
const ID_LEN: usize = 32;
/// The per-thread block ids are cut from.
const ID_BLOCK: usize = 4096;

/// Whether `name` is one of the fixed hop-by-hop headers.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == KEEP_ALIVE
        || name == TE
        || name == TRAILER
        || name == UPGRADE
        || name == PROXY_AUTHORIZATION
        || name == PROXY_AUTHENTICATE
        || name == PROXY_CONNECTION
}

/// The extra header names a `Connection` value lists (besides `close` and `keep-alive`);
/// they are hop-by-hop too. Nearly always empty, and then allocates nothing.
pub fn connection_named<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for value in values {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',').map(str::trim) {
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("keep-alive")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    named
}

/// Which of the client's headers go upstream (see the module docs).
#[derive(Debug)]
pub struct UpstreamFilter {
    /// The client's `Authorization` held Hale's own key (`server.api_keys` is set).
    client_auth_is_ours: bool,
    /// Headers the client's `Connection` header named.
    connection_named: Vec<HeaderName>,
}

impl UpstreamFilter {
    pub fn new(client_headers: &HeaderMap, client_auth_is_ours: bool) -> Self {
        Self {
            client_auth_is_ours,
            connection_named: connection_named(client_headers.get_all(CONNECTION)),
        }
    }

    /// Whether the client's header `name` is written into the request for an endpoint
    /// (`endpoint_has_key`: the endpoint sends its own `Authorization`).
    pub fn forwards(&self, name: &HeaderName, endpoint_has_key: bool) -> bool {
        if name == AUTHORIZATION || name == crate::auth::X_API_KEY {
            return !(self.client_auth_is_ours || endpoint_has_key);
        }
        !(is_hop_by_hop(name)
            || name == HOST
            || name == CONTENT_LENGTH
            || name == EXPECT
            || name == X_REQUEST_ID
            || name == X_HALE_POD
            || (!self.connection_named.is_empty() && self.connection_named.contains(name)))
    }
}

/// Whether a backend's response header `name` is passed on to the client (not hop-by-hop,
/// not one Hale sets itself). Headers named by the backend's `Connection` header are removed
/// separately, in the rare case there are any.
pub fn forwards_downstream(name: &HeaderName) -> bool {
    !(is_hop_by_hop(name) || name == X_REQUEST_ID || name == X_HALE_ENDPOINT)
}

/// Adds Hale's own response headers.
pub fn add_downstream(headers: &mut HeaderMap, endpoint: &HeaderValue, request_id: &HeaderValue) {
    headers.append(X_HALE_ENDPOINT.clone(), endpoint.clone());
    headers.append(X_REQUEST_ID.clone(), request_id.clone());
}

/// The headers Hale adds to a request for an endpoint: the request id, this replica's pod
/// and, when the endpoint has a key, its `Authorization`.
#[derive(Debug)]
pub struct Added<'a> {
    headers: [(&'a HeaderName, &'a HeaderValue); 3],
    len: usize,
}

impl<'a> Added<'a> {
    pub fn new(
        request_id: &'a HeaderValue,
        pod: &'a HeaderValue,
        auth: Option<&'a HeaderValue>,
    ) -> Self {
        let id = (&X_REQUEST_ID, request_id);
        match auth {
            Some(auth) => Self {
                headers: [id, (&X_HALE_POD, pod), (&AUTHORIZATION, auth)],
                len: 3,
            },
            None => Self {
                headers: [id, (&X_HALE_POD, pod), id],
                len: 2,
            },
        }
    }

    pub fn as_slice(&self) -> &[(&'a HeaderName, &'a HeaderValue)] {
        &self.headers[..self.len]
    }
}

/// The `Authorization` value for an endpoint's `api_key`; `None` when it has none, or when
/// the key cannot be a header value (configuration validation keeps that from happening; a
/// key that still could not be sent is better left out than sent mangled).
pub fn bearer(api_key: &str) -> Option<HeaderValue> {
    if api_key.is_empty() {
        return None;
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {api_key}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Makes request ids (see the module docs); the state is per thread.
#[derive(Debug, Default)]
pub struct RequestIds;

impl RequestIds {
    /// The client's `x-request-id` if it is usable, else a new one.
    pub fn for_request(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(id) = headers.get(&X_REQUEST_ID)
            && !id.is_empty()
            && id.len() <= MAX_CLIENT_REQUEST_ID
            && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
        {
            return id.clone();
        }
        self.generate()
    }

    /// A new id: 32 lowercase hex digits.
    pub fn generate(&self) -> HeaderValue {
        thread_local! {
            static NEXT: Cell<(u64, u64)> = Cell::new((rand::random(), 1));
            static BLOCK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
        }
        let (prefix, n) = NEXT.with(|c| {
            let (prefix, n) = c.get();
            c.set((prefix, n.wrapping_add(1)));
            (prefix, n)
        });
        let mut buf = [0_u8; ID_LEN];
        write_hex(&mut buf[..16], prefix);
        write_hex(&mut buf[16..], n);
        let id = BLOCK.with(|block| {
            let mut block = block.borrow_mut();
            if block.capacity() - block.len() < ID_LEN {
                *block = BytesMut::with_capacity(ID_BLOCK);
            }
            block.extend_from_slice(&buf);
            block.split().freeze()
        });
        // Hex digits are always a valid header value; the fallback is never taken.
        HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

fn write_hex(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn forwarded(h: &HeaderMap, f: &UpstreamFilter, endpoint_has_key: bool) -> Vec<String> {
        h.keys()
            .filter(|n| f.forwards(n, endpoint_has_key))
            .map(|n| n.as_str().to_owned())
            .collect()
    }

    #[test]
    fn upstream_drops_hop_by_hop_and_what_hale_writes_itself() {
        let h = map(&[
            ("connection", "keep-alive, x-private, Upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("host", "hale.example"),
            ("content-length", "42"),
            ("expect", "100-continue"),
            ("x-request-id", "old"),
            ("x-hale-pod", "forged"),
            ("authorization", "Bearer client-key"),
            ("content-type", "application/json"),
            ("x-custom", "kept"),
        ]);
        let f = UpstreamFilter::new(&h, false);
        assert_eq!(
            forwarded(&h, &f, false),
            ["authorization", "content-type", "x-custom"],
            "no gateway keys, no endpoint key: the client's Authorization passes"
        );
        assert_eq!(
            forwarded(&h, &f, true),
            ["content-type", "x-custom"],
            "the endpoint's key replaces it"
        );
        let ours = UpstreamFilter::new(&h, true);
        assert_eq!(
            forwarded(&h, &ours, false),
            ["content-type", "x-custom"],
            "Hale's own key never goes on"
        );
        let anthropic = map(&[
            ("x-api-key", "sk-client"),
            ("anthropic-version", "2023-06-01"),
        ]);
        let f = UpstreamFilter::new(&anthropic, false);
        assert_eq!(
            forwarded(&anthropic, &f, false),
            ["x-api-key", "anthropic-version"]
        );
        assert_eq!(forwarded(&anthropic, &f, true), ["anthropic-version"]);
        let ours = UpstreamFilter::new(&anthropic, true);
        assert_eq!(
            forwarded(&anthropic, &ours, false),
            ["anthropic-version"],
            "Hale's own key in x-api-key never goes on either"
        );
    }

    #[test]
    fn downstream_drops_hop_by_hop_and_hale_sets_its_own() {
        for (name, passed) in [
            ("transfer-encoding", false),
            ("connection", false),
            ("keep-alive", false),
            ("x-request-id", false),
            ("x-hale-endpoint", false),
            ("content-type", true),
            ("content-length", true),
            ("x-ratelimit-remaining", true),
        ] {
            assert_eq!(
                forwards_downstream(&HeaderName::from_static(name)),
                passed,
                "{name}"
            );
        }
        let mut h = HeaderMap::new();
        add_downstream(
            &mut h,
            &HeaderValue::from_static("vllm-a"),
            &HeaderValue::from_static("r1"),
        );
        assert_eq!(
            (
                h[&X_HALE_ENDPOINT].to_str().unwrap(),
                h[&X_REQUEST_ID].to_str().unwrap()
            ),
            ("vllm-a", "r1")
        );
        let named = connection_named([&HeaderValue::from_static("close, X-Foo,keep-alive, x-bar")]);
        assert_eq!(
            named,
            [
                HeaderName::from_static("x-foo"),
                HeaderName::from_static("x-bar")
            ]
        );
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let ids = RequestIds;
        let a = ids.generate();
        let b = ids.generate();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit), "{a:?}");
        assert_eq!(
            a.as_bytes()[..16],
            b.as_bytes()[..16],
            "same thread, same prefix"
        );
        let (na, nb) = (
            u64::from_str_radix(std::str::from_utf8(&a.as_bytes()[16..]).unwrap(), 16).unwrap(),
            u64::from_str_radix(std::str::from_utf8(&b.as_bytes()[16..]).unwrap(), 16).unwrap(),
        );
        assert_eq!(nb, na + 1, "a counter, not a random draw");
        // Across block boundaries, every id stays whole and distinct.
        let many: Vec<HeaderValue> = (0..300).map(|_| ids.generate()).collect();
        let distinct: std::collections::HashSet<&[u8]> =
            many.iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(distinct.len(), 300);
        assert!(many.iter().all(|v| v.len() == 32));
        // Another thread draws its own prefix.
        let other = std::thread::spawn(|| RequestIds.generate()).join().unwrap();
        assert_ne!(other.as_bytes()[..16], a.as_bytes()[..16]);

        assert_eq!(
            ids.for_request(&map(&[("x-request-id", "client-7")])),
            "client-7"
        );
        let long = "x".repeat(200);
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert_eq!(ids.for_request(&h).len(), 32);
        assert_eq!(
            ids.for_request(&map(&[("x-request-id", "has space")]))
                .len(),
            32
        );
        assert_eq!(bearer(""), None);
        let key = bearer("sk-backend").unwrap();
        assert_eq!(key, "Bearer sk-backend");
        assert!(key.is_sensitive());
    }
}
