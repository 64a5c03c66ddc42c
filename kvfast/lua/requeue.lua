-- requeue.lua: move dead letters back onto their partition's queue, in order.
--
-- KEYS[1]  dead letters   {ns:p}:d
-- KEYS[2]  queue          {ns:p}:q      (same hash tag: one slot)
-- KEYS[3]  counters       {ns:p}:s      hash: drained, dead (dead counts what is
--                                        in the dead-letter list, so a requeued
--                                        entry moves from dead back to queued)
-- ARGV     pairs: dead-letter document, the entry to push in its place
--          (kvfast.deadletter pushes a resync of the document's key, not the
--          old entry, which could undo newer writes)
--
-- Each document is removed from the dead-letter list (first occurrence) and its
-- replacement appended to the queue only if the document was still there, so two
-- operators requeueing at once cannot push an entry twice.  Returns the number
-- of entries requeued.

local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('HINCRBY', KEYS[3], 'dead', -moved)
end
return moved
