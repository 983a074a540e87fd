-- Reserve one job's quota atomically: end expired leases, check every counter, then debit
-- all of them and write the lease and the idempotency record; or change nothing.
--
-- KEYS[1] lease hash, KEYS[2] idempotency hash, then per counter: value, lease-end zset,
-- lease-amount hash, then (for an update) the replaced lease's hash (all in one hash-tagged slot).
-- ARGV[1] now, ARGV[2] lease end, ARGV[3] lease id, ARGV[4] tenant id, ARGV[5] idempotency
-- key ('' for none), ARGV[6] window in seconds, ARGV[7] counter count, then per counter:
-- key, kind (held|cumulative), amount, cap ('' for none), base, reach (1|0), enforced (1|0),
-- share (fixed|headroom|overflow), chip_max, chip_min (0 0: divisible); then the replaced
-- lease's id ('' for none).
--
-- While the replaced lease is live (not released or refunded), each counter is checked as if
-- its current debit there were already given back: a held counter's live share, a cumulative
-- counter's recorded debit. The new lease still debits its whole amounts.
--
-- Time is the caller's (ARGV[1]), never Redis TIME; Redis TTLs only collect garbage. Times
-- reach Redis commands as the caller's exact strings: Lua would print numbers with 14 digits.
-- Amounts are doubles stored as '%.17g' strings, which round-trip exactly: TPP sums are
-- integers far below 2^53 and stay exact; training operations near 1e26 keep 16 digits.
-- The arithmetic mirrors gateway.core.leases (split_amounts, Counter.refuses) term by term.

local now = tonumber(ARGV[1])
local lease_end = tonumber(ARGV[2])
local lease_id = ARGV[3]
local idem = ARGV[5]
local window = tonumber(ARGV[6])
local n = tonumber(ARGV[7])

local function fmt(x)
  return string.format('%.17g', x)
end

local function store(key, value)
  if value <= 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, fmt(value), 'KEEPTTL')
  end
end

if idem ~= '' then
  local rec = redis.call('HMGET', KEYS[2], 'state', 'expires', 'status', 'headers', 'body')
  if rec[1] and tonumber(rec[2]) > now then
    if rec[1] == 'done' then
      return {'replay', rec[3], rec[4], rec[5]}
    end
    return {'in_progress'}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'in_progress'}
end

local function expire(v, z, a)
  local ended = redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[1])
  if #ended == 0 then
    return
  end
  local value = tonumber(redis.call('GET', v) or '0')
  for _, id in ipairs(ended) do
    value = value - tonumber(redis.call('HGET', a, id) or '0')
    redis.call('HDEL', a, id)
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', ARGV[1])
  store(v, value)
end

local stride = 10
local replaced = ARGV[8 + n * stride] or ''
local old = nil
if replaced ~= '' then
  old = KEYS[3 + n * 3]
  if redis.call('EXISTS', old) == 0 or redis.call('HGET', old, 'released') or redis.call('HGET', old, 'refunded') then
    old = nil
  end
end

local cs = {}
for i = 1, n do
  local o = 7 + (i - 1) * stride
  local k = 2 + (i - 1) * 3
  local c = {
    key = ARGV[o + 1], kind = ARGV[o + 2], amount = tonumber(ARGV[o + 3]),
    cap = tonumber(ARGV[o + 4]), base = tonumber(ARGV[o + 5]), reach = ARGV[o + 6] == '1',
    enforced = ARGV[o + 7] == '1', share = ARGV[o + 8],
    chip_max = tonumber(ARGV[o + 9]), chip_min = tonumber(ARGV[o + 10]),
    v = KEYS[k + 1], z = KEYS[k + 2], a = KEYS[k + 3],
  }
  if c.kind == 'held' then
    expire(c.v, c.z, c.a)
  end
  c.before = tonumber(redis.call('GET', c.v) or '0')
  c.credit = 0
  if old then
    local credit
    if c.kind == 'held' then
      credit = redis.call('HGET', c.a, replaced)
    else
      credit = redis.call('HGET', old, c.kind .. ':' .. c.key)
    end
    c.credit = tonumber(credit or '0')
  end
  c.checked = c.before - c.credit
  cs[i] = c
end

-- Split a shared amount: headroom counters take what fits, overflow counters the rest.
-- Chips are whole: a job that does not fit leaves no fraction of a chip under the headroom.
local rest = nil
for i = 1, n do
  local c = cs[i]
  if c.share == 'headroom' then
    local pool = rest or c.amount
    local take = pool
    if c.cap then
      local room = math.max(0, c.cap - c.base - c.checked)
      if pool > room then
        take = room
        if c.chip_max > 0 then
          take = math.min(pool, math.floor(room / c.chip_max) * c.chip_min)
        end
      end
    end
    c.take = take
    rest = pool - take
  elseif c.share == 'overflow' then
    c.take = rest or c.amount
  else
    c.take = c.amount
  end
end

local failing = 0
local shadow = {}
for i = 1, n do
  local c = cs[i]
  if c.cap and c.take > 0 then
    local total = c.checked + c.base + c.take
    local over
    if c.reach then
      over = total >= c.cap
    else
      over = total > c.cap
    end
    if over then
      if not c.enforced then
        shadow[#shadow + 1] = c.key
      elseif failing == 0 then
        failing = i
      end
    end
  end
end

local befores, takes = {}, {}
for i = 1, n do
  befores[i] = fmt(cs[i].before)
  takes[i] = fmt(cs[i].take)
end

if failing > 0 then
  local c = cs[failing]
  local earliest = ''
  if c.kind == 'held' then
    local first = redis.call('ZRANGE', c.z, 0, 0, 'WITHSCORES')
    if first[2] then
      earliest = first[2]
    end
  end
  return {'denied', c.key, earliest, shadow, befores, takes}
end

local lease = {'tenant', ARGV[4], 'end', fmt(lease_end), 'idem', idem}
for i = 1, n do
  local c = cs[i]
  if c.take > 0 then
    redis.call('SET', c.v, fmt(c.before + c.take), 'KEEPTTL')
    if c.kind == 'held' then
      redis.call('ZADD', c.z, ARGV[2], lease_id)
      redis.call('HSET', c.a, lease_id, fmt(c.take))
      -- Collect a held counter nobody touches again once its last lease is long over.
      local last = redis.call('ZRANGE', c.z, -1, -1, 'WITHSCORES')
      local ttl = math.max(1, math.ceil(tonumber(last[2]) - now + window))
      redis.call('EXPIRE', c.v, ttl)
      redis.call('EXPIRE', c.z, ttl)
      redis.call('EXPIRE', c.a, ttl)
    end
    lease[#lease + 1] = c.kind .. ':' .. c.key
    lease[#lease + 1] = fmt(c.take)
  end
end
redis.call('HSET', KEYS[1], unpack(lease))
redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(lease_end - now + window)))
if idem ~= '' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'state', 'pending', 'lease', lease_id, 'expires', fmt(now + window))
  redis.call('EXPIRE', KEYS[2], math.max(1, math.ceil(window)))
end
return {'admitted', '', '', shadow, befores, takes}
