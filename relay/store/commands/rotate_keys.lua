-- Rotate a watch's signing secret. KEYS: watch hash. ARGV: new sealed secret, now ms, when
-- the current secret stops signing (ms), and optionally the tag of the secrets the caller
-- saw ('' = any): when the secret before the newest stops signing (ms; '0': never rotated).
-- Every rotation changes the tag, and it tells nothing of any secret. Secrets whose grace
-- has passed are dropped, and a watch signs with at most three (the newest and two still
-- in their grace, newest first): a fourth rotation inside the grace retires the oldest at
-- once.
-- Returns the new secrets list (JSON), false when there is no such watch, or 'stale' when
-- the secrets are no longer the ones the caller saw (a form sent twice). Safe to run twice
-- (a sealed secret is never sealed the same way twice) -- but a call re-sent after its
-- reply was lost and another rotation was made gets 'stale', though it did rotate.
local raw = redis.call('HGET', KEYS[1], 'secrets')
if not raw then return false end
local now = tonumber(ARGV[2])
local current = cjson.decode(raw)
-- a second run of this very call (its reply was lost): the new secret is first already
if current[1] and current[1][1] == ARGV[1] then return raw end
if ARGV[4] and ARGV[4] ~= '' then
  local tag = current[2] and string.format('%.0f', tonumber(current[2][2])) or '0'
  if tag ~= ARGV[4] then return 'stale' end
end
local out = {{ARGV[1], 0}}
for _, s in ipairs(current) do
  local e = tonumber(s[2])
  if e == 0 then
    table.insert(out, {s[1], tonumber(ARGV[3])})
  elseif e > now then
    table.insert(out, {s[1], e})
  end
  if #out == 3 then break end
end
local encoded = cjson.encode(out)
redis.call('HSET', KEYS[1], 'secrets', encoded, 'updated', ARGV[2])
return encoded
