-- Read a version's state and its outcome counts in the current window.
--
-- KEYS: 1 version state, 2 version window, 3 version policy, 4 service policy
-- ARGV: 1 default policy JSON
-- Returns {state hash as a flat list, counts JSON}.

-- Summed from the buckets rather than read from the totals, which are only
-- rolled forward by writes: a read must not write, nor keep an idle window alive.
local now = clock()
local policy = load_policy(KEYS[3], KEYS[4], ARGV[1])
local size = policy.bucket_seconds
local oldest = math.floor(now / size) * size - math.ceil(policy.window_seconds / size) * size
local counts = {}
for _, kind in ipairs(KINDS) do counts[kind] = 0 end
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  local bucket, kind = string.match(fields[i], '^(%d+):(.+)$')
  if bucket and tonumber(bucket) >= oldest and counts[kind] then
    counts[kind] = counts[kind] + tonumber(fields[i + 1])
  end
end
return {redis.call('HGETALL', KEYS[1]), cjson.encode(counts)}
