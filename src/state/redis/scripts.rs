//! The Lua scripts that make each check-and-spend one step on the server: two replicas can
//! never spend one use, or one rate slot, twice.

pub(super) struct Scripts {
    pub(super) consume: redis::Script,
    pub(super) settle: redis::Script,
    pub(super) revoke: redis::Script,
    pub(super) rate: redis::Script,
    pub(super) give_back: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            consume: redis::Script::new(CONSUME),
            settle: redis::Script::new(SETTLE),
            revoke: redis::Script::new(REVOKE),
            rate: redis::Script::new(RATE),
            give_back: redis::Script::new(GIVE_BACK),
        }
    }
}

/// Spends one use: `{"notlive"}`, `{"retry"}`, `{"exhausted"}` or `{"counted", used, max}`.
const CONSUME: &str = r"
local h = redis.call('HMGET', KEYS[1], 'exp', 'max', 'u', 'fp', 'ok', 'rv')
if not h[1] or h[6] == '1' or tonumber(ARGV[2]) >= tonumber(h[1]) then return {'notlive'} end
if h[4] == ARGV[1] and h[5] == '0' then return {'retry'} end
local used = tonumber(h[3])
if h[2] ~= '' and used >= tonumber(h[2]) then return {'exhausted'} end
used = used + 1
redis.call('HSET', KEYS[1], 'u', used, 'fp', ARGV[1], 'ok', '0')
return {'counted', used, h[2]}
";

/// Records how the last write ended, if it is still the last one.
const SETTLE: &str = r"
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then redis.call('HSET', KEYS[1], 'ok', ARGV[2]) end
return 1
";

/// Revokes one phantom if it still exists (a lapsed one is not brought back). KEYS: the
/// phantom, `live`, `epoch`.
const REVOKE: &str = r"
local gone = redis.call('HGET', KEYS[1], 'rv')
if not gone or gone == '1' then return 0 end
redis.call('HSET', KEYS[1], 'rv', '1')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
";

/// A sliding window: `{1}` counted (or room, when only looking), `{0, ms}` full for `ms` more.
/// ARGV: now, window (ms), max, take (0/1), a member unique to this write.
const RATE: &str = r"
local now, window, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= max then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.max(1, tonumber(oldest[2]) + window - now)}
end
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  if redis.call('PTTL', KEYS[1]) < window then redis.call('PEXPIRE', KEYS[1], window) end
end
return {1}
";

/// Takes back one write counted at exactly ARGV[1].
const GIVE_BACK: &str = r"
local m = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'LIMIT', 0, 1)
if m[1] then redis.call('ZREM', KEYS[1], m[1]) end
return 1
";

// Held writes. `KEYS` are always the hold, its approvals, the byte counter and the index;
// `ARGV[1]` is now, `ARGV[2]` the retention and `ARGV[3]` the forward lease, then each script's own.

/// Closes a hold as ARGV[3]... (`close(state)`): its bytes dropped and uncounted, kept for RETAIN.
const CLOSE: &str = r"
local function close(state)
  redis.call('HSET', KEYS[1], 'state', state, 'finished', ARGV[1])
  local b = redis.call('HGET', KEYS[1], 'bytes')
  if redis.call('HDEL', KEYS[1], 'body') == 1 and b then redis.call('DECRBY', KEYS[3], b) end
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
-- A stale forward is held again; a held write past its time expires ('expired-now').
local function refresh(h)
  local state = h[1]
  if state == 'forwarding' and tonumber(h[5]) + tonumber(ARGV[3]) < tonumber(ARGV[1]) then
    state = 'held'
    redis.call('HSET', KEYS[1], 'state', 'held')
  end
  -- A write with its approvals (held again after a forward with no answer) does not expire.
  if state == 'held' and tonumber(h[2]) <= tonumber(ARGV[1])
    and redis.call('HLEN', KEYS[2]) < tonumber(h[4]) then
    close('expired')
    return 'expired-now'
  end
  return state
end
local h = redis.call('HMGET', KEYS[1], 'state', 'expires', 'requester', 'required', 'fwd')
";

/// ARGV: now, retain, meta, body, bytes, max bytes, expires, requester, required, created, id, max holds.
const PUT: &str = r"
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
if total + tonumber(ARGV[5]) > tonumber(ARGV[6]) then return 0 end
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[12]) then return 0 end
redis.call('HSET', KEYS[1], 'meta', ARGV[3], 'body', ARGV[4], 'bytes', ARGV[5], 'state', 'held',
  'expires', ARGV[7], 'requester', ARGV[8], 'required', ARGV[9], 'fwd', '0')
redis.call('INCRBY', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[10], ARGV[11])
return 1
";

/// ARGV: now, retain, lease, approver key, approval JSON, this forward's lease token.
const APPROVE: &str = r"
if not h[1] then return 'unknown' end
local state = refresh(h)
if state ~= 'held' then return state end
if h[3] == ARGV[4] then return 'requester' end
local added = redis.call('HSETNX', KEYS[2], ARGV[4], ARGV[5])
local n = redis.call('HLEN', KEYS[2])
if n >= tonumber(h[4]) then
  redis.call('HSET', KEYS[1], 'state', 'forwarding', 'fwd', ARGV[1], 'lease', ARGV[6])
  return 'ready:' .. n
end
if added == 0 then return 'twice:' .. n end
return 'counted:' .. n
";

/// ARGV: now, retain, lease, rejection JSON.
const REJECT: &str = r"
if not h[1] then return 'unknown' end
local state = refresh(h)
if state ~= 'held' then return state end
redis.call('HSET', KEYS[1], 'rejected', ARGV[4])
close('rejected')
return 'rejected'
";

/// ARGV: now, retain, lease, 'retry' or the upstream's status, the forward's lease token (a
/// forward whose lease was taken over ends nothing).
const FINISH: &str = r"
if h[1] ~= 'forwarding' or redis.call('HGET', KEYS[1], 'lease') ~= ARGV[5] then return 0 end
if ARGV[4] == 'retry' then
  redis.call('HSET', KEYS[1], 'state', 'held')
  return 1
end
redis.call('HSET', KEYS[1], 'status', ARGV[4])
close('forwarded')
return 1
";

/// ARGV: now, retain, lease, id. 1 if the hold expired now; 0 otherwise; -1 if it is gone.
const REFRESH: &str = r"
if not h[1] then
  redis.call('ZREM', KEYS[4], ARGV[4])
  return -1
end
if refresh(h) == 'expired-now' then return 1 end
return 0
";

/// The held writes' scripts (`holds.rs`).
pub(super) struct HoldScripts {
    pub(super) put: redis::Script,
    pub(super) approve: redis::Script,
    pub(super) reject: redis::Script,
    pub(super) finish: redis::Script,
    pub(super) refresh: redis::Script,
}

impl HoldScripts {
    pub(super) fn new() -> HoldScripts {
        let with_close = |body: &str| redis::Script::new(&format!("{CLOSE}{body}"));
        HoldScripts {
            put: redis::Script::new(PUT),
            approve: with_close(APPROVE),
            reject: with_close(REJECT),
            finish: with_close(FINISH),
            refresh: with_close(REFRESH),
        }
    }
}
