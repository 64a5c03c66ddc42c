#!lua flags=allow-oom
-- ack.lua: finish an in-flight batch after its PostgreSQL transaction committed.
--
-- KEYS[1]  in-flight list   {ns:p}:f
-- KEYS[2]  in-flight meta   {ns:p}:fm
-- KEYS[3]  dead letters     {ns:p}:d
-- KEYS[4]  counters         {ns:p}:s   hash: drained, dead
-- KEYS[5]  holds            {ns:p}:h   hash: "t:<table>" → JSON document, "next" → ms
-- KEYS[6 .. 5+nt]           object hashes of keys deleted by this batch (tombstones)
-- KEYS[6+nt .. 5+nt+nh]     held lists {ns:p}:h:<table>, one per hold below
-- KEYS[6+nt+nh ..]          object hashes whose writes all drained with this batch
--                           (models with a TTL: they get their TTL now)
-- ARGV[1]  owner id
-- ARGV[2]  epoch
-- ARGV[3]  tombstone field name
-- ARGV[4]  number of entries applied (for the drained counter)
-- ARGV[5]  nd: number of dead letters
-- ARGV[6]  nt: number of tombstones
-- ARGV[7]  nh: number of holds
-- ARGV[8]  write-id field name
-- ARGV[9]  ms from now until the holds that remain are retried
-- then     nd dead letters (JSON documents with entry and error)
--          nt tombstone ids, one per tombstone key
--          per hold: the holds-hash field ("t:<table>"), how many entries to
--          trim off the head of the held list (they were applied), the hold's
--          JSON document ("" when the table drained: the hold ends once its
--          list is empty), n, then n entries to append to the held list
--          per object to expire: its ttl in seconds, the write id it must
--          still carry (a newer write since then keeps it without a TTL)
--
-- Returns 1 when acked, 0 when the caller no longer owns the batch (its lease
-- expired and another drainer took it: that drainer will ack it instead).
-- A tombstone is removed only if it is still the one this batch's delete left;
-- a newer create of the same key has already replaced it.  An object gets its
-- TTL only here, once its last write is in PostgreSQL: until then Redis holds
-- the only copy, which neither expiry nor a volatile-* eviction may take.
--
-- allow-oom: this script moves or frees memory (draining is what frees a full
-- Redis), so it must run when Redis is at maxmemory; Redis refuses a script
-- without the flag as soon as used_memory > maxmemory (OOM command not allowed).

local meta = redis.call('HMGET', KEYS[2], 'owner', 'epoch')
if meta[1] ~= ARGV[1] or meta[2] ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
local nd = tonumber(ARGV[5])
local nt = tonumber(ARGV[6])
local nh = tonumber(ARGV[7])
local at = 10

-- RPUSH in chunks: unpack() fails beyond a few thousand values (LUAI_MAXCSTACK).
local function push(key, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + 999, last)
    redis.call('RPUSH', key, unpack(ARGV, i, j))
    i = j + 1
  end
end

push(KEYS[3], at, at + nd - 1)
at = at + nd
if tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[4], 'drained', ARGV[4])
end
if nd > 0 then
  redis.call('HINCRBY', KEYS[4], 'dead', nd)
end

for k = 6, 5 + nt do
  if redis.call('HGET', KEYS[k], ARGV[3]) == ARGV[at] then
    redis.call('DEL', KEYS[k])
  end
  at = at + 1
end

if nh > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for h = 1, nh do
    local list = KEYS[5 + nt + h]
    local field, trim, doc, n = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2], tonumber(ARGV[at + 3])
    at = at + 4
    if trim > 0 then
      redis.call('LTRIM', list, trim, -1)
    end
    push(list, at, at + n - 1)
    at = at + n
    if doc ~= '' then
      redis.call('HSET', KEYS[5], field, doc)
    elseif redis.call('LLEN', list) == 0 then
      redis.call('HDEL', KEYS[5], field)
    end
  end
  if redis.call('HLEN', KEYS[5]) <= 1 and redis.call('HEXISTS', KEYS[5], 'next') == 1 then
    redis.call('DEL', KEYS[5])
  elseif redis.call('HLEN', KEYS[5]) > 0 then
    redis.call('HSET', KEYS[5], 'next', now + tonumber(ARGV[9]))
  end
end

for k = 6 + nt + nh, #KEYS do
  if redis.call('HGET', KEYS[k], ARGV[8]) == ARGV[at + 1] then
    redis.call('EXPIRE', KEYS[k], ARGV[at])
  end
  at = at + 2
end
return 1
