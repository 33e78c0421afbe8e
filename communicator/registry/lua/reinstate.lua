-- An operator reinstates an invalid version.
--
-- KEYS: 1 version state, 2 version window, 3 events stream
-- ARGV: 1 service, 2 version, 3 reason, 4 events maxlen, 5 events channel
-- Returns 1 if the version became valid, 0 if it was not invalid.

local now, now_text = clock()
if redis.call('HGET', KEYS[1], 'state') ~= 'invalid' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'valid', 'reason', ARGV[3], 'changed_at', now_text)
redis.call('HDEL', KEYS[1], 'invalidated_at', 'evidence')
-- The failures that tripped it would trip it again at the next failure.
redis.call('DEL', KEYS[2])
publish_event(ARGV[5], KEYS[3], ARGV[4], {
  type = 'version_reinstated', service = ARGV[1], version = ARGV[2], reason = ARGV[3], time = now,
})
return 1
