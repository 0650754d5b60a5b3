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
