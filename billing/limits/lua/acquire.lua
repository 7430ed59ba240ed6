-- One run decides a batch of admissions of one org, in order, each seeing the charges of those
-- before it, after applying the settlements that rode along (so an admission sees every
-- settlement its process finished before it). Returns one reply per admission:
-- {status, denied, retry_ms, milli-levels..., used...} with status 0 ok, 1 limited, 2 over budget,
-- or {-1, missing counter indexes...} when a counter needs a seed: that admission charges nothing
-- (the settlements are applied either way).
local backs, deltas, k, p = read_settlements()
settle(backs, deltas)
local specs
specs, k, p = read_specs(k, p)
for _, spec in ipairs(specs) do
  spec.b, spec.c = {}, {}
  for i = 1, spec.nb do spec.b[i] = bucket(spec.keys[i], spec.caps[i]) end
  for j = 1, spec.ng do spec.c[j] = counter(spec.counters[j]) end
  spec.ttl = math.max(3600, spec.expires - math.floor(now / 1000))
end

local admissions = read_admissions(specs, p)
local replies = {}
for r, a in ipairs(admissions) do
  local spec = a.spec
  local nb, ng, b, c = spec.nb, spec.ng, spec.b, spec.c
  local status, denied, retry, missing = 0, -1, 0, nil
  for i = 1, nb do
    if denied < 0 and b[i].v < a.need[i] then
      status, denied = 1, i - 1
      retry = math.ceil((a.need[i] - b[i].v) * window / b[i].cap)
    end
  end
  for j = 1, ng do
    local cj = c[j]
    if cj.used == nil then
      if a.seed[j] == -1 then
        missing = missing or {}
        missing[#missing + 1] = j - 1
      else
        cj.used, cj.ttl = a.seed[j], spec.ttl
      end
    end
    local limit = spec.limits[j]
    if cj.used ~= nil and denied < 0 and limit >= 0 and cj.used + a.cost[j] > limit then
      status, denied = 2, nb + j - 1
    end
  end
  local out
  if missing then
    out = {-1}
    for _, j in ipairs(missing) do out[#out + 1] = j end
  else
    if status == 0 then
      for i = 1, nb do b[i].v, b[i].dirty = b[i].v - a.need[i], true end
      for j = 1, ng do c[j].used, c[j].add = c[j].used + a.cost[j], c[j].add + a.cost[j] end
    end
    out = {status, denied, retry}
    for i = 1, nb do out[#out + 1] = math.floor(b[i].v * 1000) end
    for j = 1, ng do out[#out + 1] = c[j].used end
  end
  replies[r] = out
end
write()
return replies
