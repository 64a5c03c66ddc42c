-- hydrate.lua: load an object read from PostgreSQL into Redis, unless Redis
-- already has it (or a tombstone for it): Redis always wins over the older copy.
--
-- KEYS[1]  object hash   {ns:p}:o:<table>:<key>
-- ARGV[1]  ttl in seconds, "0" for none
-- ARGV[2 ..]  field, value pairs (the non-NULL columns of the row)
--
-- Returns 1 when written, 0 when the key already existed.  Queues nothing: the
-- row is already in PostgreSQL.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local i = 2
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return 1
