#!lua flags=allow-oom
-- rebase.lua: give the caller's in-flight batch an epoch newer than PostgreSQL's.
--
-- KEYS[1]  in-flight meta   {ns:p}:fm
-- KEYS[2]  epoch counter    {ns:p}:e
-- ARGV[1]  owner id
-- ARGV[2]  the batch's current epoch
-- ARGV[3]  the newest epoch PostgreSQL's fence row has seen for this partition
--
-- Returns the new epoch, or 0 when the batch is no longer the caller's.
--
-- Why: epochs live in Redis, the fence in PostgreSQL.  If Redis loses its data
-- (a restart without persistence, a FLUSHALL) the counter starts again at 1
-- while the fence remembers a higher epoch, and every batch would be fenced off
-- as stale.  A drainer that still owns its batch (owner and epoch match here)
-- is not stale: it moves the counter past PostgreSQL's epoch and retries.  A
-- drainer whose batch was taken over fails the ownership check and gives up.
--
-- allow-oom: this script moves or frees memory (draining is what frees a full
-- Redis), so it must run when Redis is at maxmemory; Redis refuses a script
-- without the flag as soon as used_memory > maxmemory (OOM command not allowed).

local meta = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if meta[1] ~= ARGV[1] or meta[2] ~= ARGV[2] then
  return 0
end
local epoch = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3]) + 1
if epoch < floor then
  epoch = floor
  redis.call('SET', KEYS[2], epoch)
end
redis.call('HSET', KEYS[1], 'epoch', epoch)
return epoch
