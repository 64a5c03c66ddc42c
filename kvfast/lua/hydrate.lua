-- hydrate.lua: load an object read from PostgreSQL into Redis, unless Redis
-- already has it (or a tombstone for it): Redis always wins over the older copy.
--
-- KEYS[1]  object hash   {ns:p}:o:<table>:<key>
-- KEYS[2 ..]  index sets {ns:p}:x:<table>:<field>:<value> of the row's indexed
--             values (same hash tag), SADDed the key when written, so that
--             every object in Redis is in the sets of its values (kvfast.find)
-- ARGV[1]  ttl in seconds, "0" for none
-- ARGV[2]  the object's key (the index sets' member), "" without index sets
-- ARGV[3 ..]  field, value pairs (the non-NULL columns of the row)
--
-- Returns 1 when written, 0 when the key already existed.  Queues nothing: the
-- row is already in PostgreSQL.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local i = 3
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
for k = 2, #KEYS do
  redis.call('SADD', KEYS[k], ARGV[2])
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return 1
