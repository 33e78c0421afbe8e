-- Record outcomes of a version and apply its invalidation policy, atomically.
--
-- KEYS: 1 version state, 2 version window, 3 version policy, 4 service policy,
--       5 service versions, 6 services, 7 service failures, 8 events stream
-- ARGV: 1 service, 2 version, 3 kind, 4 count, 5 reason, 6 instance, 7 server,
--       8 default policy JSON, 9 failures maxlen, 10 events maxlen, 11 events channel,
--       12 reporter (who gave the evidence; '' when unknown)
-- Returns {invalidated now (0/1), state, reason, evidence JSON or ''}.

local service, version, kind = ARGV[1], ARGV[2], ARGV[3]
local count = tonumber(ARGV[4])
local now, now_text = clock()
local policy = load_policy(KEYS[3], KEYS[4], ARGV[8])

touch_version(KEYS[1], KEYS[5], KEYS[6], service, version, now_text)
add_outcome(KEYS[2], now, policy, kind, count)
-- Running totals since the version was first seen: analysis takes differences of them.
redis.call('HINCRBY', KEYS[1], 'total:' .. kind, count)

local state = redis.call('HMGET', KEYS[1], 'state', 'reason', 'evidence')
if kind == 'success' then
  return {0, state[1], state[2] or '', state[3] or ''}
end
add_reporter(KEYS[2], now, policy, ARGV[12] or '', count)

-- The entry id is Redis's time in ms; empty fields are left out to keep it small.
local entry = {'version', version, 'kind', kind, 'count', count}
if ARGV[5] ~= '' then entry[#entry + 1] = 'reason'; entry[#entry + 1] = ARGV[5] end
if ARGV[6] ~= '' then entry[#entry + 1] = 'instance'; entry[#entry + 1] = ARGV[6] end
if ARGV[7] ~= '' then entry[#entry + 1] = 'server'; entry[#entry + 1] = ARGV[7] end
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[9], '*', unpack(entry))

-- Invalidated once: later failures are recorded but trip nothing, so the
-- event is published exactly once however many routers report at once.
if state[1] == 'invalid' then
  return {0, state[1], state[2] or '', state[3] or ''}
end

local counts = window_counts(KEYS[2])
local failures = 0
for _, failure_kind in ipairs(policy.failure_kinds) do
  failures = failures + counts[failure_kind]
end
local crashes = counts.disconnect + counts.crash
local total = failures + counts.success
-- 0/0 would be NaN, which cjson refuses to encode (a crash loop can trip with no outcomes).
local rate = 0
if total > 0 then rate = failures / total end
local reporters = window_reporters(KEYS[2])
local min_reporters = policy.min_reporters or 1
local rule, reason
if min_reporters > 1 and reporters < min_reporters then
  return {0, 'valid', '', ''}  -- not enough independent evidence yet
elseif policy.crash_loop > 0 and crashes >= policy.crash_loop then
  rule = 'crash_loop'
  reason = string.format('crash loop: %d disconnects or crashes within %d s (limit %d)',
    crashes, policy.window_seconds, policy.crash_loop)
elseif failures >= policy.min_failures and rate > policy.max_failure_rate then
  rule = 'failure_rate'
  reason = string.format('failure rate %.2f above %.2f: %d failures of %d outcomes within %d s',
    rate, policy.max_failure_rate, failures, total, policy.window_seconds)
else
  return {0, 'valid', '', ''}
end

local evidence = {
  rule = rule, counts = counts, failures = failures, crashes = crashes, outcomes = total,
  rate = rate, window_seconds = policy.window_seconds,
  min_failures = policy.min_failures, max_failure_rate = policy.max_failure_rate,
  crash_loop = policy.crash_loop, reporters = reporters, min_reporters = min_reporters,
  last = {kind = kind, reason = ARGV[5], instance = ARGV[6], server = ARGV[7]},
}
local evidence_json = cjson.encode(evidence)
redis.call('HSET', KEYS[1], 'state', 'invalid', 'reason', reason, 'changed_at', now_text,
  'invalidated_at', now_text, 'evidence', evidence_json)
publish_event(ARGV[11], KEYS[8], ARGV[10], {
  type = 'version_invalidated', service = service, version = version, reason = reason,
  evidence = evidence, time = now,
})
return {1, 'invalid', reason, evidence_json}
