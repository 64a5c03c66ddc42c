-- claim.lua: hand a drainer one partition's batch, recorded as in flight.
--
-- KEYS come in groups of four, one group per candidate partition (the caller
-- passes one group on Redis Cluster, several on a standalone Redis):
--   KEYS[4i+1]  queue            {ns:p}:q    entries waiting (producers RPUSH)
--   KEYS[4i+2]  in-flight list   {ns:p}:f    the batch being applied
--   KEYS[4i+3]  in-flight meta   {ns:p}:fm   hash: owner, epoch, deadline (ms)
--   KEYS[4i+4]  epoch counter    {ns:p}:e    INCR'd for every hand-out
-- ARGV[1]  owner id (unique per drainer process)
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  batch size (max entries popped)
--
-- Returns nil when no partition has work, else a flat array
--   { group index (0-based), epoch, retaken (0 or 1), entry, entry, ... }
--
-- Rules: at most one batch per partition is in flight, so the writes to one key
-- reach PostgreSQL in the order Redis received them.  A batch whose lease has
-- expired (its drainer died or stalled) is handed out again, whole and before
-- anything newer in that partition, with a new epoch; PostgreSQL fences off the
-- old epoch.  New entries are popped with one LMPOP over every free partition's
-- queue and copied to the in-flight list in the same atomic step, so a crash
-- between pop and commit loses nothing.  Time is Redis's (TIME), so drainers on
-- hosts with skewed clocks agree on leases.

local owner = ARGV[1]
local lease = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function hand_out(g, retaken, entries)
  local base = g * 4
  local epoch = redis.call('INCR', KEYS[base + 4])
  redis.call('HSET', KEYS[base + 3], 'owner', owner, 'epoch', epoch, 'deadline', now + lease)
  local out = { g, epoch, retaken }
  for i = 1, #entries do
    out[i + 3] = entries[i]
  end
  return out
end

local free_queues = {}
local free_groups = {}
local groups = #KEYS / 4
for g = 0, groups - 1 do
  local base = g * 4
  local deadline = redis.call('HGET', KEYS[base + 3], 'deadline')
  if deadline then
    if tonumber(deadline) < now then
      return hand_out(g, 1, redis.call('LRANGE', KEYS[base + 2], 0, -1))
    end
  else
    free_queues[#free_queues + 1] = KEYS[base + 1]
    free_groups[KEYS[base + 1]] = g
  end
end
if #free_queues == 0 then
  return nil
end

-- unpack() only expands as the last argument: build LMPOP's arguments in full.
local lmpop = { #free_queues }
for i = 1, #free_queues do
  lmpop[i + 1] = free_queues[i]
end
lmpop[#lmpop + 1] = 'LEFT'
lmpop[#lmpop + 1] = 'COUNT'
lmpop[#lmpop + 1] = count
local popped = redis.call('LMPOP', unpack(lmpop))
if not popped then
  return nil
end
local g = free_groups[popped[1]]
local entries = popped[2]
-- Copy in chunks: unpack() fails beyond a few thousand values (LUAI_MAXCSTACK).
local inflight = KEYS[g * 4 + 2]
local i = 1
while i <= #entries do
  local j = math.min(i + 999, #entries)
  redis.call('RPUSH', inflight, unpack(entries, i, j))
  i = j + 1
end
return hand_out(g, 0, entries)
