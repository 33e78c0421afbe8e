-- Count a bad password and start throttling its source or service past a limit.
--
-- KEYS: 1 failures by source, 2 failures by service, 3 block by source,
--       4 block by service, 5 events stream
-- ARGV: 1 service, 2 source, 3 window seconds, 4 limit per source,
--       5 limit per service, 6 block milliseconds, 7 events maxlen, 8 events channel
-- Returns the milliseconds until the caller may retry (0: not throttled).

local now = clock()
local window = tonumber(ARGV[3])

local function count_failure(counter_key)
  local count = redis.call('INCR', counter_key)
  -- The window starts at the first failure; EXPIRE NX needs Redis 7.
  if count == 1 then redis.call('EXPIRE', counter_key, window) end
  return count
end

local function throttle(counter_key, block_key, count, limit, scope)
  if count < limit then return end
  -- SET NX: one start of throttling, so one event, however many checks race.
  if redis.call('SET', block_key, count, 'PX', ARGV[6], 'NX') then
    redis.call('DEL', counter_key)
    publish_event(ARGV[8], KEYS[5], ARGV[7], {
      type = 'bad_passwords', service = ARGV[1], source = ARGV[2], scope = scope,
      count = count, retry_after = tonumber(ARGV[6]) / 1000, time = now,
    })
  end
end

throttle(KEYS[1], KEYS[3], count_failure(KEYS[1]), tonumber(ARGV[4]), 'source')
throttle(KEYS[2], KEYS[4], count_failure(KEYS[2]), tonumber(ARGV[5]), 'service')
return math.max(redis.call('PTTL', KEYS[3]), redis.call('PTTL', KEYS[4]), 0)
