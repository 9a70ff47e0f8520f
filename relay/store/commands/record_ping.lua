-- Record one watch.ping attempt among a watch's attempt records, its status untouched.
-- KEYS: the watch's state hash. ARGV: the attempt record, attempt records kept.
-- The record takes the next number ('#<n + 1>', n from the 'st' field, as settle.lua
-- numbers them) and n moves on; the oldest record beyond the kept number is dropped.
-- Safe to run twice: a second run of this very call finds its record last (a ping's record
-- holds its own event id) and adds nothing. Returns the record's number (false: no watch).
local st = redis.call('HGET', KEYS[1], 'st')
if not st then return false end
local s, a, r, rest = string.match(st, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
if redis.call('HGET', KEYS[1], '#' .. r) == ARGV[1] then return tonumber(r) end
local seq = (tonumber(r) or 0) + 1
redis.call('HSET', KEYS[1], 'st', s .. '|' .. a .. '|' .. seq .. '|' .. rest, '#' .. seq, ARGV[1])
local kept = tonumber(ARGV[2])
if seq > kept then redis.call('HDEL', KEYS[1], '#' .. (seq - kept)) end
return seq
