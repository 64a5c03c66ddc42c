#!lua flags=allow-oom
-- ack.lua: finish an in-flight batch after its PostgreSQL transaction committed.
--
-- KEYS[1]  in-flight list   {ns:p}:f
-- KEYS[2]  in-flight meta   {ns:p}:fm
-- KEYS[3]  dead letters     {ns:p}:d
-- KEYS[4]  counters         {ns:p}:s   hash: drained, dead
-- KEYS[5 ..]  object hashes of keys deleted by this batch (tombstones to clear)
-- ARGV[1]  owner id
-- ARGV[2]  epoch
-- ARGV[3]  tombstone field name
-- ARGV[4]  number of entries applied (for the drained counter)
-- ARGV[5]  n: number of dead letters that follow
-- ARGV[6 .. 5+n]  dead letters (JSON documents with entry and error)
-- ARGV[6+n ..]    tombstone ids, one per KEYS[5 ..]
--
-- Returns 1 when acked, 0 when the caller no longer owns the batch (its lease
-- expired and another drainer took it: that drainer will ack it instead).
-- A tombstone is removed only if it is still the one this batch's delete left;
-- a newer create of the same key has already replaced it.
--
-- allow-oom: this script moves or frees memory (draining is what frees a full
-- Redis), so it must run when Redis is at maxmemory; Redis refuses a script
-- without the flag as soon as used_memory > maxmemory (OOM command not allowed).

local meta = redis.call('HMGET', KEYS[2], 'owner', 'epoch')
if meta[1] ~= ARGV[1] or meta[2] ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
local ndead = tonumber(ARGV[5])
local i = 6
while i <= 5 + ndead do
  local j = math.min(i + 999, 5 + ndead)
  redis.call('RPUSH', KEYS[3], unpack(ARGV, i, j))
  i = j + 1
end
if tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[4], 'drained', ARGV[4])
end
if ndead > 0 then
  redis.call('HINCRBY', KEYS[4], 'dead', ndead)
end
local first_id = 6 + ndead
for k = 5, #KEYS do
  local id = ARGV[first_id + k - 5]
  if redis.call('HGET', KEYS[k], ARGV[3]) == id then
    redis.call('DEL', KEYS[k])
  end
end
return 1
