-- Refund a lease once: give back its held and cumulative debits and clear its in-progress
-- idempotency record, so that a retry is decided afresh.
--
-- KEYS[1] lease hash, KEYS[2] idempotency hash, then per counter: value, lease-end zset,
-- lease-amount hash. ARGV[1] lease id, then per counter: key, kind (held|cumulative).
-- Returns 1 if refunded now, 0 if unknown or already refunded.

local lease_id = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'refunded') then
  return 0
end

local function subtract(v, amount)
  local value = tonumber(redis.call('GET', v) or '0') - tonumber(amount)
  if value <= 0 then
    redis.call('DEL', v)
  else
    redis.call('SET', v, string.format('%.17g', value), 'KEEPTTL')
  end
end

for i = 1, (#KEYS - 2) / 3 do
  local v, z, a = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
  local key, kind = ARGV[2 * i], ARGV[2 * i + 1]
  if kind == 'held' then
    local amount = redis.call('HGET', a, lease_id)
    if amount then
      subtract(v, amount)
      redis.call('ZREM', z, lease_id)
      redis.call('HDEL', a, lease_id)
    end
  else
    local amount = redis.call('HGET', KEYS[1], kind .. ':' .. key)
    if amount then
      subtract(v, amount)
    end
  end
end
redis.call('HSET', KEYS[1], 'refunded', '1', 'released', '1')
local rec = redis.call('HMGET', KEYS[2], 'state', 'lease')
if rec[1] == 'pending' and rec[2] == lease_id then
  redis.call('DEL', KEYS[2])
end
return 1
