//! The Redis key layout of one deployment, all under `hale:{namespace}:`.
//!
//! The braces are literal: `{namespace}` is a Redis Cluster hash tag, so every key of a
//! deployment hashes to one slot and each Lua script can touch all the keys it names, on a
//! single Redis, behind Sentinel, or on a Cluster alike. Two deployments with different
//! namespaces share no key and no channel.
//!
//! | key                              | type    | holds                                        |
//! |----------------------------------|---------|----------------------------------------------|
//! | `hale:{ns}:result:<endpoint>`    | hash    | the newest result (see [`crate::wire`]), TTL `cache_ttl` |
//! | `hale:{ns}:lease:<endpoint>`     | string  | the pod id checking this round, short PX     |
//! | `hale:{ns}:lease`                | string  | the global-mode lease holder, PX `lock_ttl`  |
//! | `hale:{ns}:fence`                | counter | the fencing-token sequence                   |
//! | `hale:{ns}:events`               | channel | one message per result written (sharded pub/sub on a Cluster) |
//! | `hale:{ns}:probe`                | string  | the subscriber's write probe while Redis is down, PX 5 s |
//! | `hale:{ns}:resp:<id>`            | string  | the endpoint that created stored response `<id>`, PX 7 days (see `responses`) |

/// The keys of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys for `namespace` (validated by the config: letters, digits, `-`, `_`, `.`).
    pub fn new(namespace: &str) -> Self {
        Self {
            prefix: format!("hale:{{{namespace}}}:"),
        }
    }

    /// `hale:{ns}:` — every key of the namespace starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn result(&self, endpoint: &str) -> String {
        format!("{}result:{endpoint}", self.prefix)
    }

    pub fn lease(&self, endpoint: &str) -> String {
        format!("{}lease:{endpoint}", self.prefix)
    }

    pub fn global_lease(&self) -> String {
        format!("{}lease", self.prefix)
    }

    pub fn fence(&self) -> String {
        format!("{}fence", self.prefix)
    }

    pub fn probe(&self) -> String {
        format!("{}probe", self.prefix)
    }

    pub fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("prod-eu");
        assert_eq!(k.result("vllm-1"), "hale:{prod-eu}:result:vllm-1");
        assert_eq!(k.lease("vllm-1"), "hale:{prod-eu}:lease:vllm-1");
        assert_eq!(k.global_lease(), "hale:{prod-eu}:lease");
        assert_eq!(k.fence(), "hale:{prod-eu}:fence");
        assert_eq!(k.channel(), "hale:{prod-eu}:events");
        // An endpoint name with braces does not move the key to another slot: the first
        // `{…}` is the hash tag.
        assert!(k.result("a{b}").starts_with("hale:{prod-eu}:"));
    }
}
