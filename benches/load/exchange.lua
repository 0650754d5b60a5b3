-- wrk: POSTs npm's exchange, each pre-minted ID token exactly once (tokens are single-use).
-- Each thread takes every Nth line of TOKENS. Reports 201s per second as JSON.
-- There is no `response` callback: with one, wrk parses every response's headers into a Lua
-- table, which costs the load client (on the same cores as the broker) more than the count is
-- worth. Refusals are wrk's own count of responses with a status above 399 (the broker answers
-- an exchange with 201 or an error, nothing else).
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  tokens = {}
  local n, i = 0, 0
  for line in io.lines(os.getenv("TOKENS")) do
    if n % tonumber(os.getenv("WRK_THREADS")) == id then
      tokens[#tokens + 1] = line
    end
    n = n + 1
  end
  token_count = #tokens
  next_token = 1
end

function request()
  local t = tokens[next_token]
  if t == nil then t = "exhausted" end
  next_token = next_token + 1
  return wrk.format("POST", "/-/npm/v1/oidc/token/exchange/package/pb-bench", { ["Authorization"] = "Bearer " .. t })
end

function done(summary, latency, requests)
  local minted = 0
  for _, t in ipairs(threads) do
    minted = minted + t:get("token_count")
  end
  local refused_total = summary.errors.status
  local ok_total = summary.requests - refused_total
  local secs = summary.duration / 1e6
  io.write(string.format(
    '{"exchanges":%d,"refused":%d,"tokens":%d,"seconds":%.3f,"per_second":%.1f,"p50":%d,"p99":%d,"errors":%d}\n',
    ok_total, refused_total, minted, secs, ok_total / secs, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
