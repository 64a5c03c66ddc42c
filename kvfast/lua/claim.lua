#!lua flags=allow-oom
-- claim.lua: hand a drainer a batch, taken from one or more partitions, recorded
-- as in flight.
--
-- KEYS come in groups of four, one group per candidate partition (the caller
-- passes one group on Redis Cluster, several on a standalone Redis):
--   KEYS[4i+1]  queue            {ns:p}:q    entries waiting (producers RPUSH)
--   KEYS[4i+2]  in-flight list   {ns:p}:f    the partition's share of a batch
--   KEYS[4i+3]  in-flight meta   {ns:p}:fm   hash: owner, epoch, deadline (ms)
--   KEYS[4i+4]  epoch counter    {ns:p}:e    INCR'd for every hand-out
-- ARGV[1]  owner id (unique per drainer process)
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  batch size (max entries handed out)
--
-- Returns nil when no partition has work, else a flat array
--   { n, g1, epoch1, retaken1, count1, ..., gn, epochn, retakenn, countn,
--     entries of g1 ..., entries of g2 ..., ... }
-- with g the 0-based group index of each partition taken.
--
-- Rules: at most one batch per partition is in flight, so the writes to one key
-- reach PostgreSQL in the order Redis received them.  A partition whose lease
-- has expired (its drainer died or stalled) is handed out again alone, whole and
-- before anything newer in it, with a new epoch; PostgreSQL fences off the old
-- epoch.  Otherwise the batch is filled from the free partitions' queues in the
-- order given (the caller rotates it), up to the batch size: at moderate load one
-- claim gathers what every partition has, so a batch's fixed cost (a transaction,
-- a round trip) is paid once for many partitions, not once for each.  Entries are
-- copied to the in-flight list in the same atomic step as they leave the queue,
-- so a crash between pop and commit loses nothing.  Time is Redis's (TIME), so
-- drainers on hosts with skewed clocks agree on leases.
--
-- allow-oom: this script moves or frees memory (draining is what frees a full
-- Redis), so it must run when Redis is at maxmemory; Redis refuses a script
-- without the flag as soon as used_memory > maxmemory (OOM command not allowed).

local owner = ARGV[1]
local lease = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function lease_out(g)
  local base = g * 4
  local epoch = redis.call('INCR', KEYS[base + 4])
  redis.call('HSET', KEYS[base + 3], 'owner', owner, 'epoch', epoch, 'deadline', now + lease)
  return epoch
end

local groups = #KEYS / 4
local free = {}
for g = 0, groups - 1 do
  local deadline = redis.call('HGET', KEYS[g * 4 + 3], 'deadline')
  if deadline then
    if tonumber(deadline) < now then
      local entries = redis.call('LRANGE', KEYS[g * 4 + 2], 0, -1)
      local out = { 1, g, lease_out(g), 1, #entries }
      for i = 1, #entries do
        out[i + 5] = entries[i]
      end
      return out
    end
  else
    free[#free + 1] = g
  end
end

local head = { 0 }
local taken = {}
local left = count
for _, g in ipairs(free) do
  if left <= 0 then
    break
  end
  local popped = redis.call('LPOP', KEYS[g * 4 + 1], left)
  if popped then
    -- Copy in chunks: unpack() fails beyond a few thousand values (LUAI_MAXCSTACK).
    local i = 1
    while i <= #popped do
      local j = math.min(i + 999, #popped)
      redis.call('RPUSH', KEYS[g * 4 + 2], unpack(popped, i, j))
      i = j + 1
    end
    head[1] = head[1] + 1
    head[#head + 1] = g
    head[#head + 1] = lease_out(g)
    head[#head + 1] = 0
    head[#head + 1] = #popped
    taken[#taken + 1] = popped
    left = left - #popped
  end
end
if head[1] == 0 then
  return nil
end
local out = head
for _, popped in ipairs(taken) do
  local n = #out
  for i = 1, #popped do
    out[n + i] = popped[i]
  end
end
return out
