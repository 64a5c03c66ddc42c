-- prune.lua: drop the stale members of one partition's index sets that find read.
--
-- KEYS[1 .. n]   index sets {ns:p}:x:<table>:<field>:<value>, one per condition
--                of the find (same hash tag: one slot)
-- ARGV[1]        object hash prefix {ns:p}:o:<table>:  (+ a member = the object)
-- ARGV[2]        tombstone field name
-- ARGV[3 .. 2+n] the conditions' field names, in the order of KEYS
-- ARGV[3+n .. 2+2n]  their values, in hash encoding
-- ARGV[3+2n ..]  the members find saw stale
--
-- Returns the number of members removed.
--
-- A member is stale when its object was moved to another value (an update, or
-- a create that replaced it), deleted (a tombstone, or nothing once the delete
-- drained) or expired.  find reads the sets and hashes with plain commands
-- (one Lua call per partition cost ~10x a SINTER per partition: bench/test_7);
-- removing is done here because it must re-check the object in the same
-- atomic step: a write between find's read and the SREM may have moved the
-- key back to the value, and its member must stay.

local n = #KEYS
local fields = {ARGV[2]}
for c = 1, n do
  fields[c + 1] = ARGV[2 + c]
end
local removed = 0
for m = 3 + 2 * n, #ARGV do
  local member = ARGV[m]
  local got = redis.call('HMGET', ARGV[1] .. member, unpack(fields))
  -- a tombstone is stale in every set; no hash at all reads every field false
  for c = 1, n do
    if got[1] or got[c + 1] ~= ARGV[2 + n + c] then
      removed = removed + redis.call('SREM', KEYS[c], member)
    end
  end
end
return removed
