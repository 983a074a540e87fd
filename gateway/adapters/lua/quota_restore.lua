-- Replace one slot's quota keys with a state rebuilt from the ledger, atomically.
--
-- KEYS: every key the state names in this slot (all in one hash-tagged slot); each is
-- deleted, then written again by the operations. ARGV: operations, each a name, a key index
-- (into KEYS) and its arguments: set <value>, zadd <score> <member>, hset <field> <value>,
-- expire <seconds>. Values are the caller's exact strings (binary-safe).
-- Returns the number of operations applied; a malformed list changes nothing.

local arity = {set = 1, zadd = 2, hset = 2, expire = 1}
local i = 1
while i <= #ARGV do
  local n = arity[ARGV[i]]
  if n == nil or KEYS[tonumber(ARGV[i + 1]) or 0] == nil or i + 1 + n > #ARGV then
    return redis.error_reply('quota_restore: malformed operation at ARGV[' .. i .. ']')
  end
  i = i + 2 + n
end

for _, key in ipairs(KEYS) do
  redis.call('DEL', key)
end
local applied = 0
i = 1
while i <= #ARGV do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if op == 'set' then
    redis.call('SET', key, ARGV[i + 2])
  elseif op == 'zadd' then
    redis.call('ZADD', key, ARGV[i + 2], ARGV[i + 3])
  elseif op == 'hset' then
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
  else
    redis.call('EXPIRE', key, ARGV[i + 2])
  end
  i = i + 2 + arity[op]
  applied = applied + 1
end
return applied
