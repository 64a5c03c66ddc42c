-- update.lua: apply a partial update to an existing object and queue it, atomically.
--
-- KEYS[1]  object hash   {ns:p}:o:<table>:<key>
-- KEYS[2]  queue         {ns:p}:q            (same hash tag: one slot)
-- ARGV[1]  tombstone field name (a hash holding it is a pending delete)
-- ARGV[2]  write-id field name, "" when the model has no TTL
-- ARGV[3]  this write's id (models with a TTL; the entry carries it too)
-- ARGV[4]  the queue entry (orjson bytes, built by kvfast.codec)
-- KEYS[3 ..]  index sets {ns:p}:x:<table>:<field>:<value> of the indexed fields
--             this update sets (same hash tag), SADDed the key when applied
-- ARGV[5]  n: number of field/value pairs that follow
-- ARGV[6]  the object's key (the index sets' member), "" without index sets
-- ARGV[7 .. 6+2n]   field, value pairs to HSET
-- ARGV[7+2n ..]     fields set to NULL (HDEL: NULL is an absent field)
--
-- The set of the value a moved field had keeps the key: find (prune.lua) drops such
-- stale members when it reads them (it must anyway, for deletes and expiry).
--
-- A model with a TTL: the object loses any TTL it had (an earlier write drained
-- and gave it one) and records this write's id; ack.lua gives the TTL back
-- once this write is in PostgreSQL, if no newer write has replaced the id.
--
-- Returns 1 when applied, 0 when the object is not in Redis (the caller may
-- load it from PostgreSQL with hydrate.lua and retry), -1 when it is deleted.
-- Checking existence inside the script is what keeps an update of a missing
-- key from leaving a partial hash that would read back as a whole object.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return -1
end
local n = tonumber(ARGV[5])
local last_set = 6 + 2 * n
-- HSET in chunks: Lua's unpack() fails beyond a few thousand values.
local chunk = 1000
local i = 7
while i <= last_set do
  local j = math.min(i + chunk - 1, last_set)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
if #ARGV > last_set then
  redis.call('HDEL', KEYS[1], unpack(ARGV, last_set + 1, #ARGV))
end
if ARGV[2] ~= '' then
  redis.call('PERSIST', KEYS[1])
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
for k = 3, #KEYS do
  redis.call('SADD', KEYS[k], ARGV[6])
end
redis.call('RPUSH', KEYS[2], ARGV[4])
return 1
