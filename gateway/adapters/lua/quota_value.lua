-- Read one counter after ending its expired leases, as a reservation would see it.
--
-- KEYS[1] value, KEYS[2] lease-end zset, KEYS[3] lease-amount hash. ARGV[1] now.

local ended = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if #ended > 0 then
  local value = tonumber(redis.call('GET', KEYS[1]) or '0')
  for _, id in ipairs(ended) do
    value = value - tonumber(redis.call('HGET', KEYS[3], id) or '0')
    redis.call('HDEL', KEYS[3], id)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  if value <= 0 then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], string.format('%.17g', value), 'KEEPTTL')
  end
end
return redis.call('GET', KEYS[1]) or '0'
