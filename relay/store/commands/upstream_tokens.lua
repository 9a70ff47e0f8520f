-- Take up to ARGV[2] tokens from the upstream budget of the current second (ARGV[1] = cap,
-- ARGV[3] = now ms). KEYS: the rate key prefix, the pause key (set after a 429).
-- Returns the number granted (0 when this second's budget is spent), or minus the
-- milliseconds left of a pause.
local now = tonumber(ARGV[3])
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return -(pause - now) end
local key = KEYS[1] .. math.floor(now / 1000)
local used = tonumber(redis.call('GET', key) or '0')
local grant = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - used)
if grant <= 0 then return 0 end
redis.call('INCRBY', key, grant)
redis.call('PEXPIRE', key, 2000)
return grant
