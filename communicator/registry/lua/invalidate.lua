-- An operator invalidates a version: same state change and event as a tripped policy.
--
-- KEYS: 1 version state, 2 service versions, 3 events stream
-- ARGV: 1 service, 2 version, 3 reason, 4 evidence JSON, 5 events maxlen, 6 events channel
-- Returns 1 if the version became invalid, 0 if it already was.

local now, now_text = clock()
if redis.call('HGET', KEYS[1], 'state') == 'invalid' then return 0 end
-- Listed even if never seen yet: an operator may bar a version before it ships.
redis.call('ZADD', KEYS[2], 'NX', now_text, ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'invalid', 'reason', ARGV[3], 'changed_at', now_text,
  'invalidated_at', now_text, 'evidence', ARGV[4])
publish_event(ARGV[6], KEYS[3], ARGV[5], {
  type = 'version_invalidated', service = ARGV[1], version = ARGV[2], reason = ARGV[3],
  evidence = cjson.decode(ARGV[4]), time = now,
})
return 1
