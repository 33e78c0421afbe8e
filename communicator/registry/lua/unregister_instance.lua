-- Forget an instance and its client id mapping (if it still maps to it).
--
-- KEYS: 1 service instances, 2 clients
-- ARGV: 1 service, 2 instance
-- Returns the InstanceInfo JSON that was removed, or false.

local record = redis.call('HGET', KEYS[1], ARGV[2])
if not record then return false end
redis.call('HDEL', KEYS[1], ARGV[2])
local client_id = cjson.decode(record).client_id
local mapped = redis.call('HGET', KEYS[2], client_id)
if mapped then
  local info = cjson.decode(mapped)
  if info.service == ARGV[1] and info.instance == ARGV[2] then
    redis.call('HDEL', KEYS[2], client_id)
  end
end
return record
