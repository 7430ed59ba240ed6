-- KEYS and ARGV, read in the order billing/limits/scripts.py writes them (the layout is written
-- out there). Each reader returns what it read and the KEYS and ARGV positions of what follows,
-- where the next reader starts.
local now = tonumber(ARGV[1])

-- The settlements: ARGV[2] token buckets and ARGV[3] spend counters; per bucket its capacity and
-- the tokens to give back (negative takes more), then per counter its cost correction (real minus
-- reserved). Their keys come first in KEYS, in the same order.
local function read_settlements()
  local nt, ns = tonumber(ARGV[2]), tonumber(ARGV[3])
  local backs, deltas = {}, {}
  for i = 1, nt do
    backs[i] = {key = KEYS[i], cap = tonumber(ARGV[2 + 2 * i]), back = tonumber(ARGV[3 + 2 * i])}
  end
  for j = 1, ns do
    deltas[j] = {key = KEYS[nt + j], delta = tonumber(ARGV[3 + 2 * nt + j])}
  end
  return backs, deltas, 1 + nt + ns, 4 + 2 * nt + ns
end

-- The specs: their number, then per spec nb, ng, the capacity of each of its nb buckets, the
-- limit (-1: none) of each of its ng spend counters, and the epoch second the counters expire at.
-- Its nb + ng keys are the next ones in KEYS.
local function read_specs(k, p)
  local specs = {}
  for s = 1, tonumber(ARGV[p]) do
    local nb, ng = tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
    local spec = {nb = nb, ng = ng, keys = {}, caps = {}, counters = {}, limits = {}}
    for i = 1, nb do
      spec.keys[i], spec.caps[i] = KEYS[k + i - 1], tonumber(ARGV[p + 2 + i])
    end
    for j = 1, ng do
      spec.counters[j], spec.limits[j] = KEYS[k + nb + j - 1], tonumber(ARGV[p + 2 + nb + j])
    end
    spec.expires = tonumber(ARGV[p + 3 + nb + ng])
    specs[s] = spec
    k, p = k + nb + ng, p + 3 + nb + ng
  end
  return specs, k, p + 1
end

-- The admissions: their number, then per admission its spec's number (from 1), what it takes
-- from each of the spec's buckets, what it reserves on each counter, and each counter's seed
-- (-1: none).
local function read_admissions(specs, p)
  local admissions = {}
  for r = 1, tonumber(ARGV[p]) do
    local spec = specs[tonumber(ARGV[p + 1])]
    local nb, ng = spec.nb, spec.ng
    local a = {spec = spec, need = {}, cost = {}, seed = {}}
    for i = 1, nb do a.need[i] = tonumber(ARGV[p + 1 + i]) end
    for j = 1, ng do
      a.cost[j] = tonumber(ARGV[p + 1 + nb + j])
      a.seed[j] = tonumber(ARGV[p + 1 + nb + ng + j])
    end
    admissions[r] = a
    p = p + 1 + nb + 2 * ng
  end
  return admissions, p + 1
end
