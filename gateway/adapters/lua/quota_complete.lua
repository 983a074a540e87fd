-- Record a finished submission: its response for idempotent replay, and its job id on the
-- lease.
--
-- KEYS[1] lease hash, KEYS[2] idempotency hash. ARGV[1] lease id, ARGV[2] 1 if there is an
-- idempotency key, ARGV[3] now, ARGV[4] window in seconds, ARGV[5] status, ARGV[6] headers
-- (JSON), ARGV[7] body, ARGV[8] upstream, ARGV[9] job id ('' for none).

local lease_id = ARGV[1]
if ARGV[2] == '1' then
  local owner = redis.call('HGET', KEYS[2], 'lease')
  if not owner or owner == lease_id then
    local window = tonumber(ARGV[4])
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[2], 'state', 'done', 'lease', lease_id,
      'expires', string.format('%.17g', tonumber(ARGV[3]) + window),
      'status', ARGV[5], 'headers', ARGV[6], 'body', ARGV[7])
    redis.call('EXPIRE', KEYS[2], math.max(1, math.ceil(window)))
  end
end
if ARGV[9] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'upstream', ARGV[8], 'job', ARGV[9])
end
return 1
