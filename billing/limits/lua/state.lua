-- Buckets and spend counters. Every key of the run is read with one MGET up front and written
-- once at the end, so a run costs 1 + (buckets) + (counters) redis.call()s however many
-- admissions and settlements share its keys. A token bucket is a string "<level> <ms stamp>" with
-- a PX expiry (it expires once it would be full again); a spend counter is an integer string
-- (micro-USD) that lives to the end of its month.
local window = 60000
local stored = {}
if #KEYS > 0 then
  local found = redis.call('MGET', unpack(KEYS))
  for i = 1, #KEYS do stored[KEYS[i]] = found[i] end
end
local buckets, bucket_order, spend, spend_order = {}, {}, {}, {}

-- A bucket refilled up to now. Anything else stored under its key (a hash left by an older
-- version) reads as a full bucket and is replaced when written.
local function bucket(key, cap)
  local b = buckets[key]
  if b == nil then
    local v, t
    local raw = stored[key]
    if raw then
      local gap = string.find(raw, ' ', 1, true)
      if gap then v, t = tonumber(string.sub(raw, 1, gap - 1)), tonumber(string.sub(raw, gap + 1)) end
    end
    if v == nil or t == nil then
      v, t = cap, now
    elseif now > t then
      v, t = math.min(cap, v + (now - t) * cap / window), now
    end
    b = {v = v, t = t, cap = cap, dirty = false}
    buckets[key] = b
    bucket_order[#bucket_order + 1] = key
  end
  return b
end

-- A spend counter; `used` is nil while it is missing (it needs a seed).
local function counter(key)
  local c = spend[key]
  if c == nil then
    local raw = stored[key]
    c = {used = raw and tonumber(raw) or nil, add = 0, ttl = nil}
    spend[key] = c
    spend_order[#spend_order + 1] = key
  end
  return c
end

-- Settlements (see read_settlements). A counter that does not exist is left alone: it will be
-- seeded with the settled spend from the database.
local function settle(backs, deltas)
  for _, s in ipairs(backs) do
    local b = bucket(s.key, s.cap)
    b.v, b.dirty = math.min(s.cap, b.v + s.back), true
  end
  for _, s in ipairs(deltas) do
    local c = counter(s.key)
    if c.used ~= nil then
      c.used, c.add = c.used + s.delta, c.add + s.delta
    end
  end
end

local function write()
  for _, key in ipairs(bucket_order) do
    local b = buckets[key]
    if b.dirty then
      redis.call('SET', key, b.v .. ' ' .. b.t, 'PX', math.ceil((b.cap - b.v) * window / b.cap) + 1000)
    end
  end
  for _, key in ipairs(spend_order) do
    local c = spend[key]
    if c.ttl ~= nil then
      redis.call('SET', key, c.used, 'EX', c.ttl)
    elseif c.add ~= 0 then
      redis.call('INCRBY', key, c.add)
    end
  end
end
