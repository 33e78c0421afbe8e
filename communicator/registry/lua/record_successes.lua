-- Add batched success counts to many versions at once (no policy check:
-- successes only lower a failure rate).
--
-- KEYS: 1 services, then for each version: state, window, version policy,
--       service policy, service versions
-- ARGV: 1 default policy JSON, then for each version: service, version, count

local now, now_text = clock()
local policies = {}  -- decoded once per distinct policy text in this batch
for i = 0, (#ARGV - 1) / 3 - 1 do
  local k, a = 1 + i * 5, 1 + i * 3
  local raw = redis.call('GET', KEYS[k + 3]) or redis.call('GET', KEYS[k + 4]) or ARGV[1]
  local policy = policies[raw]
  if not policy then
    policy = cjson.decode(raw)
    policies[raw] = policy
  end
  touch_version(KEYS[k + 1], KEYS[k + 5], KEYS[1], ARGV[a + 1], ARGV[a + 2], now_text)
  add_outcome(KEYS[k + 2], now, policy, 'success', tonumber(ARGV[a + 3]))
  redis.call('HINCRBY', KEYS[k + 1], 'total:success', tonumber(ARGV[a + 3]))
end
return 0
