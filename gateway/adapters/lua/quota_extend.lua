-- Hold a live job's lease until at least ARGV[2] (mirrored by QuotaBook.extend).
-- A held share that already lapsed is held again (the job still runs); released or
-- refunded leases stay ended.
--
-- KEYS[1] lease hash, then per held counter: value, lease-end zset, lease-amount hash.
-- ARGV[1] lease id, ARGV[2] end, ARGV[3] now, ARGV[4] window, then per held counter its key.
-- Returns the lease's end after the call as a string, or false when it has no live lease.

local lease_id, now, window = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'released') then
  return false
end
local function fmt(x)
  return string.format('%.17g', x)
end
local new_end = math.max(tonumber(redis.call('HGET', KEYS[1], 'end') or '0'), tonumber(ARGV[2]))
if new_end <= now then
  return fmt(new_end)
end
for i = 1, (#KEYS - 1) / 3 do
  local v, z, a = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local amount = redis.call('HGET', KEYS[1], 'held:' .. ARGV[4 + i])
  if amount then
    -- End this counter's lapsed leases first, as every reader does.
    local ended = redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[3])
    local value = tonumber(redis.call('GET', v) or '0')
    for _, id in ipairs(ended) do
      value = value - tonumber(redis.call('HGET', a, id) or '0')
      redis.call('HDEL', a, id)
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', ARGV[3])
    if redis.call('ZSCORE', z, lease_id) == false then
      value = value + tonumber(amount)
      redis.call('HSET', a, lease_id, amount)
    end
    redis.call('ZADD', z, 'GT', fmt(new_end), lease_id)
    if value <= 0 then
      redis.call('DEL', v)
    else
      redis.call('SET', v, fmt(value))
    end
    local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
    local ttl = math.max(1, math.ceil(tonumber(last[2]) - now + window))
    redis.call('EXPIRE', v, ttl)
    redis.call('EXPIRE', z, ttl)
    redis.call('EXPIRE', a, ttl)
  end
end
redis.call('HSET', KEYS[1], 'end', fmt(new_end))
redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(new_end - now + window)))
return fmt(new_end)
