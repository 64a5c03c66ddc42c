-- find.lua: the objects of one partition whose indexed fields hold the given values.
--
-- KEYS[1]        counters   {ns:p}:s   (its "drained" field: find's race check)
-- KEYS[2 .. 1+n] index sets {ns:p}:x:<table>:<field>:<value>, one per condition
--                (same hash tag: one slot)
-- ARGV[1]        object hash prefix {ns:p}:o:<table>:  (+ a member = the object)
-- ARGV[2]        tombstone field name
-- ARGV[3 .. 2+n] the conditions' field names, in the order of KEYS[2 ..]
-- ARGV[3+n ..]   their values, in hash encoding
--
-- Returns {drained, key1, hash1, key2, hash2, …}: the partition's drained counter
-- ("" before its first ack) and, for every member of the smallest set whose
-- object holds every value and is not a tombstone, its key and HGETALL.
--
-- Members are stale when their object was moved to another value (an update
-- or a create that replaced it), deleted (a tombstone, or nothing once the
-- delete drained) or expired: each is removed from the sets whose value it no
-- longer holds, so a value's set shrinks back to its live keys once it is read.

local n = #KEYS - 1
local smallest, size = 2, redis.call('SCARD', KEYS[2])
for k = 3, #KEYS do
  local c = redis.call('SCARD', KEYS[k])
  if c < size then
    smallest, size = k, c
  end
end
local out = {redis.call('HGET', KEYS[1], 'drained') or ''}
if size == 0 then
  return out
end
local fields = {ARGV[2]}
for c = 1, n do
  fields[c + 1] = ARGV[2 + c]
end
for _, member in ipairs(redis.call('SMEMBERS', KEYS[smallest])) do
  local obj = ARGV[1] .. member
  local got = redis.call('HMGET', obj, unpack(fields))
  -- a tombstone is stale in every set; no hash at all reads every field false
  local live = not got[1]
  local match = live
  for c = 1, n do
    if not live or got[c + 1] ~= ARGV[2 + n + c] then
      match = false
      redis.call('SREM', KEYS[1 + c], member)
    end
  end
  if match then
    out[#out + 1] = member
    out[#out + 1] = redis.call('HGETALL', obj)
  end
end
return out
