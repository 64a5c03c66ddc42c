#!lua flags=allow-oom
-- renew.lua: extend the lease of an in-flight batch the caller still owns.
--
-- KEYS[1]  in-flight meta   {ns:p}:fm
-- ARGV[1]  owner id
-- ARGV[2]  epoch
-- ARGV[3]  lease in milliseconds (from now, Redis time)
--
-- Returns 1 when renewed, 0 when the batch is no longer the caller's.
--
-- allow-oom: this script moves or frees memory (draining is what frees a full
-- Redis), so it must run when Redis is at maxmemory; Redis refuses a script
-- without the flag as soon as used_memory > maxmemory (OOM command not allowed).

local meta = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if meta[1] ~= ARGV[1] or meta[2] ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'deadline', now + tonumber(ARGV[3]))
return 1
