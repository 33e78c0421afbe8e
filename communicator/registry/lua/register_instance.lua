-- Register an instance unless its version is invalid, and mark the version seen.
--
-- KEYS: 1 version state, 2 service versions, 3 services, 4 service instances, 5 clients,
--       6 service commands
-- ARGV: 1 service, 2 version, 3 instance, 4 client id, 5 InstanceInfo JSON,
--       6 '1' to make the instance's commands (ARGV 7...) the service's, else ''
-- Returns {registered (0/1), version state hash as a flat list}.

local service, instance, client_id = ARGV[1], ARGV[3], ARGV[4]
local _, now_text = clock()
touch_version(KEYS[1], KEYS[2], KEYS[3], service, ARGV[2], now_text)
if redis.call('HGET', KEYS[1], 'state') == 'invalid' then
  return {0, redis.call('HGETALL', KEYS[1])}
end

-- The same instance name from a new client (a restart): the old client's will
-- must no longer resolve to this instance, or it would unregister the new one.
local previous = redis.call('HGET', KEYS[4], instance)
if previous then
  local old_client = cjson.decode(previous).client_id
  if old_client ~= client_id then
    local mapped = redis.call('HGET', KEYS[5], old_client)
    if mapped then
      local info = cjson.decode(mapped)
      if info.service == service and info.instance == instance then
        redis.call('HDEL', KEYS[5], old_client)
      end
    end
  end
end
redis.call('HSET', KEYS[4], instance, ARGV[5])
redis.call('HSET', KEYS[5], client_id, ARGV[5])

-- What Registry.set_commands does, in the same step: the latest REGISTER's list wins.
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[6])
  if #ARGV > 6 then redis.call('SADD', KEYS[6], unpack(ARGV, 7)) end
  redis.call('SADD', KEYS[3], service)
end
return {1, redis.call('HGETALL', KEYS[1])}
