#!lua flags=allow-oom,allow-cross-slot-keys
-- claim.lua: hand a drainer a batch, taken from one or more partitions, recorded
-- as in flight.
--
-- KEYS come in groups of five, one group per candidate partition (on a Redis
-- Cluster, the partitions one node serves: KEYS hold the first group, the
-- others follow in ARGV[5..], since a cluster refuses declared KEYS of several
-- slots, and allow-cross-slot-keys lets the script reach the other slots of
-- its own node; kvfast.claims.claim_routed):
--   KEYS[5i+1]  queue            {ns:p}:q    entries waiting (producers RPUSH)
--   KEYS[5i+2]  in-flight list   {ns:p}:f    the partition's share of a batch
--   KEYS[5i+3]  in-flight meta   {ns:p}:fm   hash: owner, epoch, deadline (ms)
--   KEYS[5i+4]  epoch counter    {ns:p}:e    INCR'd for every hand-out
--   KEYS[5i+5]  holds            {ns:p}:h    hash: tables whose entries wait (see below)
-- ARGV[1]  owner id (unique per drainer process)
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  batch size (max entries handed out)
-- ARGV[4]  "1" to take back, first, any partition this owner holds in flight
-- ARGV[5..] more groups of five key names (Redis Cluster: see above)
--          (the reply of its previous claim was lost: those partitions are its
--          own, nobody else may take them before their lease runs out)
--
-- Returns nil when no partition has work, else a flat array
--   { n, g1, epoch1, retaken1, count1, nhold1, ..., gn, ..., countn, nholdn,
--     entries of g1 ..., entries of g2 ..., ...,
--     hold fields of g1 (2*nhold1 values: name, value) ..., of g2 ..., ... }
-- with g the 0-based group index of each partition taken.
--
-- Holds: a table whose entries a drainer could not apply (its schema is
-- broken, or the entries come from a model version the drainer does not know)
-- keeps them, in order, in the partition's held list {ns:p}:h:<table>; the
-- holds hash has a field "t:<table>" (a JSON document: reason, since, tries)
-- per held table and "next", the Redis time (ms) of the next retry.  A free
-- partition with a hold due is handed out even when its queue is empty, so a
-- held table resumes by itself once it can be applied.  Held lists are read
-- and trimmed by the drainer that holds the partition's claim (ack.lua).
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
local recover = ARGV[4] == '1'
-- every group's keys, the declared ones and those passed in ARGV (a cluster node)
local K = KEYS
if #ARGV > 4 then
  K = {}
  for i = 1, #KEYS do K[i] = KEYS[i] end
  for i = 5, #ARGV do K[#K + 1] = ARGV[i] end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local G = 5

local function lease_out(g)
  local base = g * G
  local epoch = redis.call('INCR', K[base + 4])
  redis.call('HSET', K[base + 3], 'owner', owner, 'epoch', epoch, 'deadline', now + lease)
  return epoch
end

local function holds(g)
  if redis.call('EXISTS', K[g * G + 5]) == 0 then
    return {}
  end
  return redis.call('HGETALL', K[g * G + 5])
end

local function append(out, values)
  local n = #out
  for i = 1, #values do
    out[n + i] = values[i]
  end
end

-- One partition handed out again, whole: its lease expired, or its owner lost
-- the reply of the claim that gave it out.
local function retake(g)
  local entries = redis.call('LRANGE', K[g * G + 2], 0, -1)
  local held = holds(g)
  local out = { 1, g, lease_out(g), 1, #entries, #held / 2 }
  append(out, entries)
  append(out, held)
  return out
end

-- On a cluster node, a group passed in ARGV may be in a slot that is moving
-- (resharding) or has moved: a command on one of its keys would then fail
-- mid-script, after the commands before it had run (a queue popped into an
-- in-flight list that is already elsewhere).  So each such group is probed
-- first, every key, with pcall: one refusal and the group is left for the next
-- claim, untouched.  (The declared group is checked by Redis before the script.)
local function local_group(g)
  if g == 0 or K == KEYS then
    return true
  end
  for i = 1, G do
    local r = redis.pcall('EXISTS', K[g * G + i])
    if type(r) == 'table' and r.err then
      return false
    end
  end
  return true
end

local groups = #K / G
local free = {}
for g = 0, groups - 1 do
  if local_group(g) then
    local meta = redis.call('HMGET', K[g * G + 3], 'deadline', 'owner')
    local deadline = meta[1]
    if deadline then
      if tonumber(deadline) < now or (recover and meta[2] == owner) then
        return retake(g)
      end
    else
      free[#free + 1] = g
    end
  end
end

local head = { 0 }
local taken = {}
local held = {}
local left = count
for _, g in ipairs(free) do
  if left <= 0 then
    break
  end
  local popped = redis.call('LPOP', K[g * G + 1], left)
  local hold = {}
  if popped then
    -- Copy in chunks: unpack() fails beyond a few thousand values (LUAI_MAXCSTACK).
    local i = 1
    while i <= #popped do
      local j = math.min(i + 999, #popped)
      redis.call('RPUSH', K[g * G + 2], unpack(popped, i, j))
      i = j + 1
    end
    hold = holds(g)
  else
    popped = {}
    local next_try = redis.call('HGET', K[g * G + 5], 'next')
    if next_try and tonumber(next_try) <= now then
      hold = holds(g)
    end
  end
  if #popped > 0 or #hold > 0 then
    head[1] = head[1] + 1
    head[#head + 1] = g
    head[#head + 1] = lease_out(g)
    head[#head + 1] = 0
    head[#head + 1] = #popped
    head[#head + 1] = #hold / 2
    taken[#taken + 1] = popped
    held[#held + 1] = hold
    left = left - #popped
  end
end
if head[1] == 0 then
  return nil
end
local out = head
for _, popped in ipairs(taken) do
  append(out, popped)
end
for _, hold in ipairs(held) do
  append(out, hold)
end
return out
