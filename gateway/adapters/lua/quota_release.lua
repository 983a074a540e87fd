-- Release a cancelled job's held TPP once; cumulative debits (budgets, training operations)
-- stay, since the job may have run.
--
-- KEYS[1] lease hash, then per held counter: value, lease-end zset, lease-amount hash.
-- ARGV[1] lease id. Returns 1 if this call gave capacity back, else 0.

local lease_id = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'released') then
  return 0
end
local gave = 0
for i = 1, (#KEYS - 1) / 3 do
  local v, z, a = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local amount = redis.call('HGET', a, lease_id)
  if amount then
    local value = tonumber(redis.call('GET', v) or '0') - tonumber(amount)
    if value <= 0 then
      redis.call('DEL', v)
    else
      redis.call('SET', v, string.format('%.17g', value), 'KEEPTTL')
    end
    redis.call('ZREM', z, lease_id)
    redis.call('HDEL', a, lease_id)
    gave = 1
  end
end
redis.call('HSET', KEYS[1], 'released', '1')
return gave
