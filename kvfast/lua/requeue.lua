-- requeue.lua: move dead letters back onto their partition's queue, in order.
--
-- KEYS[1]  dead letters   {ns:p}:d
-- KEYS[2]  queue          {ns:p}:q      (same hash tag: one slot)
-- ARGV     pairs: dead-letter document, the queue entry inside it
--
-- Each document is removed from the dead-letter list (first occurrence) and its
-- entry appended to the queue only if the document was still there, so two
-- operators requeueing at once cannot push an entry twice.  Returns the number
-- of entries requeued.

local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
