//! The Lua scripts coord runs, and typed calls of them. Each runs atomically on Redis and
//! touches only keys of one namespace (one hash tag, one Cluster slot).
//!
//! Times inside the scripts come from Redis's own clock (`TIME`), so replicas with skewed
//! clocks still agree on when a round is due; what leaves a script as a duration is relative
//! (`due_in`, `pttl`) and is turned into a local deadline by the receiver.
//!
//! Fencing tokens come from one counter per namespace: each is `max(counter + 1, Redis's clock
//! in microseconds)`, so tokens keep growing across a Redis that restarted empty or a failover
//! to a replica whose counter lags, and a replica holding a token from before still takes
//! newer results. On a Cluster the scripts publish with `SPUBLISH` ([`Scripts::publish`]). Tokens stay below 2^53, so Lua's numbers hold
//! them exactly; the scripts format every number with `%.0f` before storing or sending it.

use crate::config::Topology;
use redis::{Script, Value};
use std::sync::LazyLock;

/// Shared prologue: `now` (ms, Redis clock), `now_us`, `owns(key)` (an owner check that
/// tolerates a key of the wrong type), `failed`/`wrong_type` (for `redis.pcall` answers:
/// a key of the wrong type is repaired, any other error — OOM — is raised) and
/// `next_fence(key)`. The normal path adds no command to what the scripts did before: wrong
/// types are found by the error of the command that needed the key, not by `TYPE`.
///
/// `next_fence` issues `max(counter + 1, Redis clock in µs)`: every token is re-seeded from
/// the clock, so tokens keep growing across a failover to a replica whose copy of the counter
/// lags (asynchronous replication), or a Redis that restarted empty, as long as the old and
/// the new master's clocks agree to within the failover's duration (seconds; NTP keeps them
/// within milliseconds). It also heals a poisoned counter: one that is not an integer, of
/// the wrong type, or further ahead than the clock plus an hour (a value it cannot have
/// reached) counts as absent, and the `SET` overwrites it.
const PROLOGUE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local FENCE_SKEW_US = 3600000000
local function owns(key)
  local v = redis.pcall('GET', key)
  return type(v) == 'string' and v == ARGV[1]
end
local function failed(v)
  return type(v) == 'table' and v.err ~= nil
end
local function wrong_type(v)
  return failed(v) and string.find(v.err, 'WRONGTYPE', 1, true) ~= nil
end
local function next_fence(key)
  local v = redis.pcall('GET', key)
  if failed(v) and not wrong_type(v) then error(v) end
  local f = nil
  if type(v) == 'string' then f = tonumber(v) end
  if f == nil or f ~= f or f ~= math.floor(f) or f > now_us + FENCE_SKEW_US then f = 0 end
  f = math.max(f + 1, now_us)
  redis.call('SET', key, string.format('%.0f', f))
  return f
end
";

/// Round acquisition for one endpoint.
/// KEYS: result, lease, fence. ARGV: owner, lease_ttl_ms, late_ms, max_due_in_ms,
/// max_lease_ms, channel, endpoint.
/// Returns `{0, due_in, due_at}` (not due), `{1, pttl, due_at}` (someone holds the round) or
/// `{2, fence, anchor, now - anchor, repaired}` (ours: check now, write under `fence`, next
/// round from `anchor`). A stored due time that is not a number or further ahead than
/// `max_due_in_ms` (more than this replica can plan) is poisoned: the round is due, and
/// `repaired` is 1; a result or lease key of the wrong type is deleted (`repaired` 2); a lease
/// without expiry or longer than `max_lease_ms` is taken over (`repaired` 3). The write that
/// follows the grant overwrites the bad values. A grant is announced on the channel as
/// `taken <lease_ttl_ms> <owner>\n<endpoint>`, so the other replicas wait for the result
/// instead of asking while the check runs.
const ACQUIRE: &str = r"
local repaired = 0
local raw = redis.pcall('HGET', KEYS[1], 'due_at')
if failed(raw) then
  if not wrong_type(raw) then error(raw) end
  redis.call('DEL', KEYS[1])
  raw = false
  repaired = 2
end
local due = tonumber(raw or '0')
if due == nil or due ~= due or due ~= math.floor(due) or due - now > tonumber(ARGV[4]) then
  due = 0
  repaired = 1
end
if now < due then
  return {0, due - now, due}
end
local pttl = redis.call('PTTL', KEYS[2])
if pttl > 0 and pttl <= tonumber(ARGV[5]) then
  return {1, pttl, due}
end
if pttl > 0 or pttl == -1 then repaired = 3 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local fence = next_fence(KEYS[3])
redis.call(PUB, ARGV[6], 'taken ' .. ARGV[2] .. ' ' .. ARGV[1] .. '\n' .. ARGV[7])
local anchor = due
if now - due > tonumber(ARGV[3]) then anchor = now end
return {2, fence, anchor, now - anchor, repaired}
";

/// A fenced result write.
/// KEYS: result, lease, fence. ARGV: owner, fence ('0': take a fresh one, for passive
/// results), cache_ttl_ms, planned_ms ('' keeps the due time and the lease: passive),
/// anchor_ms, channel, message body, then field/value pairs.
/// Returns `{1, fence, due_at, due_in}` when written (and published) or `{0, stored fields…}`
/// when a result with the same or a newer fence is stored (nothing written).
///
/// A stored fence that is not a number or is above the counter (which issued every real
/// token) is poisoned and overwritten, as is a key of the wrong type. The write replaces
/// the whole hash, so no field a hostile writer added survives it.
const WRITE: &str = r"
local fence = ARGV[2]
if fence == '0' then fence = string.format('%.0f', next_fence(KEYS[3])) end
local fnum = tonumber(fence)
local stored = redis.pcall('HMGET', KEYS[1], 'fence', 'due_at')
if failed(stored) then
  if not wrong_type(stored) then error(stored) end
  stored = {false, false}
end
local cur = tonumber(stored[1] or '')
local passive = ARGV[4] == ''
if cur and cur >= fnum then
  -- Refused, unless the stored fence is poisoned: above the counter, which issued every
  -- real token.
  local counter = redis.pcall('GET', KEYS[3])
  counter = type(counter) == 'string' and tonumber(counter) or nil
  if counter == nil or cur > counter then cur = nil end
end
if cur and cur >= fnum then
  if not passive and owns(KEYS[2]) then redis.call('DEL', KEYS[2]) end
  local all = redis.call('HGETALL', KEYS[1])
  table.insert(all, 1, 0)
  return all
end
local due = tonumber(stored[2] or '')
if due == nil or due ~= due or due < 0 or due > now + 86400000 * 366 then due = now end
if not passive then
  local planned = tonumber(ARGV[4])
  due = tonumber(ARGV[5]) + planned
  if due <= now then due = now + planned end
end
local due_s = string.format('%.0f', due)
local due_in_s = string.format('%.0f', due - now)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fence', fence, 'due_at', due_s, 'written_at',
  string.format('%.0f', now), unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if not passive and owns(KEYS[2]) then redis.call('DEL', KEYS[2]) end
redis.call(PUB, ARGV[6], fence .. ' ' .. due_s .. ' ' .. due_in_s .. '\n' .. ARGV[7])
return {1, fence, due_s, due_in_s}
";

/// Owner-checked release. KEYS: lease. ARGV: owner. Returns 1 if released.
const RELEASE: &str = r"
if owns(KEYS[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Owner-checked extension. KEYS: lease. ARGV: owner, ttl_ms. Returns 1 if extended.
const EXTEND: &str = r"
if owns(KEYS[1]) then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Acquire-or-extend of the global lease. KEYS: lease, fence. ARGV: owner, ttl_ms.
/// Returns `{2, owner, fence}` (acquired), `{1, owner, pttl}` (ours, extended) or
/// `{0, owner, pttl}` (held by `owner`). A lease of the wrong type, without expiry or longer
/// than `ttl_ms` is poisoned and taken over.
const GLOBAL: &str = r"
local cur = redis.pcall('GET', KEYS[1])
if failed(cur) then
  if not wrong_type(cur) then error(cur) end
  cur = false
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, cur, tonumber(ARGV[2])}
end
if cur then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 and pttl <= tonumber(ARGV[2]) then
    return {0, cur, pttl}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {2, ARGV[1], next_fence(KEYS[2])}
";

/// What `/health/shared-status` shows from Redis. KEYS: global lease, then n result keys,
/// then n lease keys. ARGV: n. Returns `{now, global owner, global pttl, then per endpoint:
/// written_at, checked_by, lease owner}` with '' for absent values (and for keys of the
/// wrong type: this script only reads).
const STATUS: &str = r"
local function get(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then return v end
  return ''
end
local out = {string.format('%.0f', now), get(KEYS[1]), redis.call('PTTL', KEYS[1])}
local n = tonumber(ARGV[1])
for i = 1, n do
  local r = redis.pcall('HMGET', KEYS[1 + i], 'written_at', 'checked_by')
  if type(r) ~= 'table' or r.err then r = {} end
  table.insert(out, r[1] or '')
  table.insert(out, r[2] or '')
  table.insert(out, get(KEYS[1 + n + i]))
end
return out
";

/// Takes a fence, for a passive result that must be signed before it is written.
/// KEYS: fence. Returns the fence.
const NEXT_FENCE: &str = r"
return next_fence(KEYS[1])
";

/// The subscriber's probe: one small write, so a Redis that refuses writes (OOM under
/// `noeviction`, a read-only replica) is not taken for healthy. KEYS: probe key. ARGV: owner.
/// Returns the server's `run_id` (which process answered: a failover shows as a new one), or
/// '' when `INFO` does not give one.
const PROBE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', 5000)
local ok, info = pcall(redis.call, 'INFO', 'server')
if not ok or type(info) ~= 'string' then return '' end
return string.match(info, 'run_id:(%x+)') or ''
";

fn script(publish: &str, body: &str) -> Script {
    Script::new(&format!("local PUB = '{publish}'\n{PROLOGUE}{body}"))
}

/// Every script, for one way of publishing events.
#[derive(Debug)]
pub struct Scripts {
    pub acquire: Script,
    pub write: Script,
    pub release: Script,
    pub extend: Script,
    pub next_fence: Script,
    pub probe: Script,
    pub global: Script,
    pub status: Script,
}

impl Scripts {
    fn with(publish: &str) -> Self {
        Self {
            acquire: script(publish, ACQUIRE),
            write: script(publish, WRITE),
            release: script(publish, RELEASE),
            extend: script(publish, EXTEND),
            next_fence: script(publish, NEXT_FENCE),
            probe: Script::new(PROBE),
            global: script(publish, GLOBAL),
            status: script(publish, STATUS),
        }
    }

    /// The scripts for `topology`: events go out with `PUBLISH` on one Redis (Sentinel's
    /// master included) and with `SPUBLISH` — sharded pub/sub, Redis 7, on the namespace's
    /// slot like every key the script touches — on a Cluster, where a classic `PUBLISH` would
    /// be broadcast to every node of the cluster.
    pub fn publish(topology: Topology) -> &'static Self {
        match topology {
            Topology::Cluster => &SHARDED,
            Topology::Single | Topology::Sentinel => &PLAIN,
        }
    }
}

static PLAIN: LazyLock<Scripts> = LazyLock::new(|| Scripts::with("PUBLISH"));
static SHARDED: LazyLock<Scripts> = LazyLock::new(|| Scripts::with("SPUBLISH"));

// === reading replies ===

/// An integer from a reply element (integer or numeric string).
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A string from a reply element (strings, integers; nil is empty).
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Nil => Some(String::new()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

/// The elements of an array reply.
pub fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(items) => Some(items),
        _ => None,
    }
}
