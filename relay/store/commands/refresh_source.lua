-- Store a video's clips fetched again (fresh download links) as its clips document, unless
-- a newer fetch is stored already; a document nobody refers to is not created.
-- KEYS: the clips document. ARGV: the document, fetched ms. Returns 1 when stored.
local cur = redis.call('HGET', KEYS[1], 'at')
if not cur or tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'at', ARGV[2])
return 1
