-- Settlements that waited for an admission run and saw none (see read_settlements).
local backs, deltas = read_settlements()
settle(backs, deltas)
write()
return 1
