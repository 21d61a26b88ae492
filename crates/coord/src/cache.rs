//! [`ResultCache`]: the typed Redis side of one namespace — round leases with fencing tokens,
//! fenced result writes with their change events, the global lease, and reads. Every call is
//! one script or one pipeline (one round trip) on the shared multiplexed connection, bounded
//! by its timeouts ([`crate::conn`]).
//!
//! The coordinator's tasks are built on it; tests use it directly to check the Redis
//! semantics (fencing, owner checks, namespaces) against a real server.

use crate::config::SharedConfig;
use crate::conn::{RedisConn, RedisFailure};
use crate::keys::Keys;
use crate::scripts::{self, Scripts};
use crate::signing::{SIG_FIELD, Signer};
use crate::wire::{self, StoredResult, WireError};
use hale_core::{FenceToken, SharedResult};
use redis::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The answer to asking for a round of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundAnswer {
    /// The round is not due: someone checked it already. The next one starts in `due_in`.
    NotDue { due_in: Duration, due_at: i64 },
    /// Another replica holds the round; its lease runs out in `pttl` at the latest.
    Busy { pttl: Duration },
    /// The round is ours: check now and write under this lease.
    Granted(RoundLease),
}

/// A round lease: the fencing token to write under and the round's anchor (its due time, or
/// now if the round started late), from which the next round is planned, and how long ago
/// (on Redis's clock) that anchor was when the lease was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundLease {
    pub fence: FenceToken,
    pub anchor: i64,
    pub since_anchor: Duration,
    /// What the script found poisoned and overrode: 0 nothing, 1 a due time, 2 a key of the
    /// wrong type, 3 a lease without expiry or longer than allowed.
    pub repaired: u8,
}

/// The outcome of a result write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Stored and published under `fence`; the next round is due in `due_in` (at `due_at`).
    Written {
        fence: FenceToken,
        due_at: i64,
        due_in: Duration,
    },
    /// Refused: the stored result has the same or a newer fence. It is returned, or the
    /// reason it could not be read.
    Refused(Result<Box<StoredResult>, WireError>),
}

/// The outcome of taking or extending the global lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalLease {
    Acquired(FenceToken),
    Extended,
    HeldBy(String),
}

/// What `/health/shared-status` shows from Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteStatus {
    /// Redis's clock at the read (ms).
    pub now_ms: i64,
    pub global_owner: Option<String>,
    /// Per configured endpoint: when its result was written (Redis ms), by whom, and who
    /// holds its round lease.
    pub endpoints: Vec<EndpointRemote>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointRemote {
    pub written_at: Option<i64>,
    pub checked_by: Option<String>,
    pub lease_owner: Option<String>,
}

/// Limits a round acquisition puts on what Redis holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// A stored due time further ahead than this is poisoned: the round is due.
    pub max_due_in: Duration,
    /// A round lease longer than this (or without expiry) is poisoned: it is taken over.
    pub max_lease: Duration,
}

impl Default for Bounds {
    /// Loose bounds (a day, a minute), for callers without an endpoint config.
    fn default() -> Self {
        Self {
            max_due_in: Duration::from_secs(86_400),
            max_lease: Duration::from_secs(60),
        }
    }
}

/// The Redis side of one namespace, acting as one owner (pod id).
#[derive(Debug, Clone)]
pub struct ResultCache {
    conn: Arc<RedisConn>,
    scripts: &'static Scripts,
    signer: Option<Arc<Signer>>,
    keys: Keys,
    owner: Arc<str>,
    cache_ttl: Duration,
}

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

fn millis(v: i64) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

fn reply_error(what: &str, items: &[Value]) -> RedisFailure {
    RedisFailure::Reply(format!("{what}: {items:?}"))
}

fn none_if_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl ResultCache {
    /// A cache for `config` (URL, password, namespace, cache TTL) acting as `owner`. Does not
    /// connect: the first call does.
    pub fn new(config: &SharedConfig, owner: &str) -> Result<Self, RedisFailure> {
        Ok(Self {
            conn: Arc::new(RedisConn::from_config(config)?),
            scripts: Scripts::publish(config.topology()),
            signer: Signer::new(config.signing_key.expose()).map(Arc::new),
            keys: Keys::new(&config.namespace),
            owner: Arc::from(owner),
            cache_ttl: config.cache_ttl,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The signer, when `shared.signing_key` is set.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_deref()
    }

    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    /// One small write (see the PROBE script): Redis answers and accepts writes, within
    /// [`REJOIN_OP_TIMEOUT`](crate::conn::REJOIN_OP_TIMEOUT) (only the rejoin probes).
    /// Returns the answering server's run id when it gave a well-formed one (40 hex digits).
    pub async fn probe(&self) -> Result<Option<String>, RedisFailure> {
        let key = self.keys.probe();
        let id = self
            .conn
            .run_within(crate::conn::REJOIN_OP_TIMEOUT, async |c| {
                self.scripts
                    .probe
                    .key(&key)
                    .arg(&*self.owner)
                    .invoke_async::<Value>(c)
                    .await
            })
            .await?;
        Ok(scripts::text(&id)
            .filter(|id| id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit())))
    }

    /// Asks for the current round of `endpoint`: granted if it is due and nobody holds it.
    /// `lease_ttl` bounds how long a dead holder blocks the round; a round starting more than
    /// `late` after its due time is re-anchored at now. Uses [`Bounds::default`].
    pub async fn acquire_round(
        &self,
        endpoint: &str,
        lease_ttl: Duration,
        late: Duration,
    ) -> Result<RoundAnswer, RedisFailure> {
        self.acquire_bounded(endpoint, lease_ttl, late, Bounds::default())
            .await
    }

    /// [`acquire_round`](Self::acquire_round), where a stored due time further ahead than
    /// `bounds.max_due_in` counts as due (poisoned) and a round lease longer than
    /// `bounds.max_lease` as free.
    pub async fn acquire_bounded(
        &self,
        endpoint: &str,
        lease_ttl: Duration,
        late: Duration,
        bounds: Bounds,
    ) -> Result<RoundAnswer, RedisFailure> {
        let (result, lease, fence, channel) = (
            self.keys.result(endpoint),
            self.keys.lease(endpoint),
            self.keys.fence(),
            self.keys.channel(),
        );
        let v = self
            .conn
            .run(async |c| {
                self.scripts
                    .acquire
                    .key(&result)
                    .key(&lease)
                    .key(&fence)
                    .arg(&*self.owner)
                    .arg(ms(lease_ttl))
                    .arg(late.as_millis().to_string())
                    .arg(ms(bounds.max_due_in))
                    .arg(ms(bounds.max_lease))
                    .arg(&channel)
                    .arg(endpoint)
                    .invoke_async::<Value>(c)
                    .await
            })
            .await?;
        let items = scripts::array(v).unwrap_or_default();
        let n = |i: usize| items.get(i).and_then(scripts::int);
        match (n(0), n(1), n(2)) {
            (Some(0), Some(due_in), Some(due_at)) if due_in >= 0 => Ok(RoundAnswer::NotDue {
                due_in: millis(due_in),
                due_at,
            }),
            (Some(1), Some(pttl), _) => Ok(RoundAnswer::Busy { pttl: millis(pttl) }),
            (Some(2), Some(fence), Some(anchor)) => match u64::try_from(fence) {
                Ok(f) if (1..wire::FENCE_LIMIT).contains(&f) => {
                    Ok(RoundAnswer::Granted(RoundLease {
                        fence: FenceToken(f),
                        anchor,
                        since_anchor: millis(n(3).unwrap_or(0)),
                        repaired: u8::try_from(n(4).unwrap_or(0)).unwrap_or(0),
                    }))
                }
                _ => Err(reply_error("acquire", &items)),
            },
            _ => Err(reply_error("acquire", &items)),
        }
    }

    /// Writes `result` for `endpoint` and publishes it, unless a result with the same or a
    /// newer fence is stored. With `round` (a check under a round lease), the write carries
    /// `result.fence`, plans the next round `planned` after the lease's anchor and releases
    /// the lease; without (a passive failure), it takes a fresh fence and leaves the round
    /// alone.
    pub async fn write(
        &self,
        endpoint: &str,
        result: &SharedResult,
        round: Option<(RoundLease, Duration)>,
    ) -> Result<WriteOutcome, RedisFailure> {
        let mut fields = wire::to_fields(result);
        let (fence, planned, anchor) = match round {
            Some((lease, planned)) => (result.fence.get(), ms(planned), lease.anchor),
            // A passive result takes its fence in the script, unless it must be signed:
            // then it takes one first (see `signing`).
            None if self.signer.is_some() => (self.next_fence().await?, String::new(), 0),
            None => (0, String::new(), 0),
        };
        fields.push(("planned_ms", planned.clone()));
        if let Some(signer) = &self.signer {
            let sig = signer.sign(endpoint, fence, &fields);
            fields.push((SIG_FIELD, sig));
        }
        let fence = fence.to_string();
        let body = wire::message_body_of(endpoint, &fields);
        let (result_key, lease_key, fence_key, channel) = (
            self.keys.result(endpoint),
            self.keys.lease(endpoint),
            self.keys.fence(),
            self.keys.channel(),
        );
        let cache_ttl = ms(self.cache_ttl);
        let v = self
            .conn
            .run(async |c| {
                let mut inv = self.scripts.write.prepare_invoke();
                inv.key(&result_key)
                    .key(&lease_key)
                    .key(&fence_key)
                    .arg(&*self.owner)
                    .arg(&fence)
                    .arg(&cache_ttl)
                    .arg(&planned)
                    .arg(anchor)
                    .arg(&channel)
                    .arg(&body);
                for (k, v) in &fields {
                    inv.arg(*k).arg(v);
                }
                inv.invoke_async::<Value>(c).await
            })
            .await?;
        let items = scripts::array(v).unwrap_or_default();
        let n = |i: usize| items.get(i).and_then(scripts::int);
        match n(0) {
            Some(1) => match (n(1), n(2), n(3)) {
                (Some(fence), Some(due_at), Some(due_in)) if fence > 0 => {
                    Ok(WriteOutcome::Written {
                        fence: FenceToken(u64::try_from(fence).unwrap_or(0)),
                        due_at,
                        due_in: millis(due_in),
                    })
                }
                _ => Err(reply_error("write", &items)),
            },
            Some(0) => {
                let fields: HashMap<String, String> = items[1..]
                    .chunks(2)
                    .filter_map(|kv| {
                        Some((scripts::text(kv.first()?)?, scripts::text(kv.get(1)?)?))
                    })
                    .collect();
                let stored =
                    wire::from_hash(Arc::from(endpoint), &fields, 0, self.signer()).map(Box::new);
                Ok(WriteOutcome::Refused(stored))
            }
            _ => Err(reply_error("write", &items)),
        }
    }

    /// Takes a fresh fence from the counter.
    async fn next_fence(&self) -> Result<u64, RedisFailure> {
        let key = self.keys.fence();
        let f = self
            .conn
            .run(async |c| {
                self.scripts
                    .next_fence
                    .key(&key)
                    .invoke_async::<i64>(c)
                    .await
            })
            .await?;
        u64::try_from(f)
            .ok()
            .filter(|f| (1..wire::FENCE_LIMIT).contains(f))
            .ok_or_else(|| RedisFailure::Reply(format!("fence {f}")))
    }

    /// Releases `endpoint`'s round lease if this owner holds it; returns whether it did.
    pub async fn release_round(&self, endpoint: &str) -> Result<bool, RedisFailure> {
        self.release(&self.keys.lease(endpoint)).await
    }

    /// Extends `endpoint`'s round lease to `ttl` if this owner holds it.
    pub async fn extend_round(&self, endpoint: &str, ttl: Duration) -> Result<bool, RedisFailure> {
        self.extend(&self.keys.lease(endpoint), ttl).await
    }

    /// Releases the global lease if this owner holds it.
    pub async fn release_global(&self) -> Result<bool, RedisFailure> {
        self.release(&self.keys.global_lease()).await
    }

    async fn release(&self, key: &str) -> Result<bool, RedisFailure> {
        let n = self
            .conn
            .run(async |c| {
                self.scripts
                    .release
                    .key(key)
                    .arg(&*self.owner)
                    .invoke_async::<i64>(c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn extend(&self, key: &str, ttl: Duration) -> Result<bool, RedisFailure> {
        let n = self
            .conn
            .run(async |c| {
                self.scripts
                    .extend
                    .key(key)
                    .arg(&*self.owner)
                    .arg(ms(ttl))
                    .invoke_async::<i64>(c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    /// Takes the global lease for `ttl`, extends it if this owner holds it, or says who does.
    pub async fn renew_global(&self, ttl: Duration) -> Result<GlobalLease, RedisFailure> {
        let (key, fence) = (self.keys.global_lease(), self.keys.fence());
        let v = self
            .conn
            .run(async |c| {
                self.scripts
                    .global
                    .key(&key)
                    .key(&fence)
                    .arg(&*self.owner)
                    .arg(ms(ttl))
                    .invoke_async::<Value>(c)
                    .await
            })
            .await?;
        let items = scripts::array(v).unwrap_or_default();
        match (
            items.first().and_then(scripts::int),
            items
                .get(1)
                .and_then(scripts::text)
                .filter(|o| o.len() <= wire::MAX_NAME),
            items.get(2).and_then(scripts::int),
        ) {
            (Some(2), _, Some(fence)) => Ok(GlobalLease::Acquired(FenceToken(
                u64::try_from(fence).unwrap_or(0),
            ))),
            (Some(1), _, _) => Ok(GlobalLease::Extended),
            (Some(0), Some(owner), _) => Ok(GlobalLease::HeldBy(owner)),
            _ => Err(reply_error("global lease", &items)),
        }
    }

    /// Reads the stored results of `endpoints` (absent ones are left out), in one pipeline:
    /// each present one parsed (bounded, see [`wire`]) or the reason it could not be, a key
    /// of the wrong type included.
    pub async fn read_all(
        &self,
        endpoints: &[Arc<str>],
    ) -> Result<Vec<(Arc<str>, Result<StoredResult, WireError>)>, RedisFailure> {
        self.read_all_within(endpoints, crate::conn::OP_TIMEOUT)
            .await
    }

    /// [`read_all`](Self::read_all) within `limit` instead of the usual bound (the rejoin's
    /// re-read).
    pub async fn read_all_within(
        &self,
        endpoints: &[Arc<str>],
        limit: std::time::Duration,
    ) -> Result<Vec<(Arc<str>, Result<StoredResult, WireError>)>, RedisFailure> {
        let keys: Vec<String> = endpoints.iter().map(|e| self.keys.result(e)).collect();
        let replies: Vec<Value> = self
            .conn
            .run_within(limit, async |c| {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                pipe.cmd("TIME");
                for key in &keys {
                    pipe.cmd("HGETALL").arg(key);
                }
                pipe.query_async(c).await
            })
            .await?;
        let mut replies = replies.into_iter();
        let time = replies.next().and_then(scripts::array).unwrap_or_default();
        let (Some(secs), Some(micros)) = (
            time.first().and_then(scripts::int),
            time.get(1).and_then(scripts::int),
        ) else {
            return Err(reply_error("TIME", &time));
        };
        let now_ms = secs.saturating_mul(1000).saturating_add(micros / 1000);
        let mut out = Vec::new();
        for (name, reply) in endpoints.iter().zip(replies) {
            let parsed = match redis::from_redis_value::<HashMap<String, String>>(reply) {
                Ok(fields) if fields.is_empty() => continue,
                Ok(fields) => wire::from_hash(name.clone(), &fields, now_ms, self.signer()),
                Err(e) => Err(WireError(format!("HGETALL: {e}"))),
            };
            out.push((name.clone(), parsed));
        }
        Ok(out)
    }

    /// Reads what the status page shows from Redis, for `endpoints`, in one script.
    pub async fn status(&self, endpoints: &[Arc<str>]) -> Result<RemoteStatus, RedisFailure> {
        let mut keys = vec![self.keys.global_lease()];
        keys.extend(endpoints.iter().map(|e| self.keys.result(e)));
        keys.extend(endpoints.iter().map(|e| self.keys.lease(e)));
        let v = self
            .conn
            .run(async |c| {
                let mut inv = self.scripts.status.prepare_invoke();
                for key in &keys {
                    inv.key(key);
                }
                inv.arg(endpoints.len()).invoke_async::<Value>(c).await
            })
            .await?;
        let items = scripts::array(v).unwrap_or_default();
        let text = |i: usize| none_if_empty(items.get(i).and_then(scripts::text));
        let now_ms = items
            .first()
            .and_then(scripts::int)
            .ok_or_else(|| reply_error("status", &items))?;
        let endpoints = (0..endpoints.len())
            .map(|i| EndpointRemote {
                written_at: items
                    .get(3 + 3 * i)
                    .and_then(scripts::int)
                    .filter(|w| (0..=now_ms.saturating_add(1000)).contains(w)),
                checked_by: text(4 + 3 * i).filter(|s| s.len() <= wire::MAX_NAME),
                lease_owner: text(5 + 3 * i).filter(|s| s.len() <= wire::MAX_NAME),
            })
            .collect();
        Ok(RemoteStatus {
            now_ms,
            global_owner: text(1),
            endpoints,
        })
    }
}
