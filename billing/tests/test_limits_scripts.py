"""The Redis limiter's script arguments: what `billing/limits/scripts.py` writes is what the Lua reads.

The layout test spells the arguments of one run out by hand, in the order the module docstring
gives. The round trips run the scripts' own reader (`lua/args.lua`) on a real Redis, with a tail
that returns what it read, and compare that with what the run was built from.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import redis

from billing.limits import Bucket, Budget, Reservation
from billing.limits.scripts import AdmissionRun, Settlements, Spec, decision, lua, settle_call

NOW_MS = 1_795_000_000_000  # 2026-11-18
DECEMBER_2 = 1_796_169_600  # when November's counters expire: the end of the month plus a day

K1 = (
    [
        Bucket("tokios:rl:{o1}:k1:rpm", "key", "requests", 60, 1),
        Bucket("tokios:rl:{o1}:k1:tpm", "key", "tokens", 1000, 0),
    ],
    [
        Budget("tokios:spend:{o1}:k1:2026-11", "key", 1, 1, "2026-11", 5_000, 0),
        Budget("tokios:spend:{o1}:org:2026-11", "org", 1, None, "2026-11", None, 0),
    ],
)
K2: tuple[list[Bucket], list[Budget]] = ([Bucket("tokios:rl:{o1}:k2:rpm", "key", "requests", 3, 1)], [])


def costs(buckets: list[Bucket], budgets: list[Budget], tokens: int, micros: int) -> tuple[list, list]:
    """The same limits with one request's costs (a TPM bucket takes tokens, a counter micros)."""
    return (
        [b._replace(cost=tokens) if b.kind == "tokens" else b for b in buckets],
        [g._replace(cost=micros) for g in budgets],
    )


def settlements() -> Settlements:
    waiting = Settlements(since=0.0)
    bucket, counter = K1[0][1], K1[1][0]
    waiting.add(Reservation([bucket._replace(cost=500)], [counter._replace(cost=90)]), 120, 40)  # 380 back, -50
    waiting.add(Reservation([bucket._replace(cost=100)], [counter._replace(cost=10)]), 150, 25)  # 50 taken, +15
    return waiting


def admission_run() -> AdmissionRun:
    """Three admissions on two specs, one with a seed for its key's counter (call it in a loop)."""
    spec1, spec2 = Spec(*K1), Spec(*K2)
    run = AdmissionRun(NOW_MS)
    loop = asyncio.get_running_loop()
    run.add(spec1, *costs(*K1, tokens=200, micros=30), None, NOW_MS, loop.create_future())
    run.add(spec2, *costs(*K2, tokens=0, micros=0), None, NOW_MS + 5, loop.create_future())
    run.add(spec1, *costs(*K1, tokens=300, micros=45), {K1[1][0].key: 7_000}, NOW_MS + 2, loop.create_future())
    return run


@pytest.mark.asyncio
async def test_an_admission_run_is_written_in_the_documented_order():
    keys, args = admission_run().call(settlements())

    assert keys == [
        "tokios:rl:{o1}:k1:tpm",  # settlements: token buckets, then counters
        "tokios:spend:{o1}:k1:2026-11",
        *(b.key.encode() for b in K1[0]),  # spec 1: buckets, then counters
        *(g.key.encode() for g in K1[1]),
        K2[0][0].key.encode(),  # spec 2
    ]
    assert [int(x) for x in args] == [
        NOW_MS + 5,  # the latest admission's clock
        1, 1, 1000, 380 - 50, -50 + 15,  # nt, ns; capacity and tokens back; cost correction
        2,  # specs
        2, 2, 60, 1000, 5_000, -1, DECEMBER_2,  # nb, ng, capacities, limits (-1: none), expiry
        1, 0, 3, 0,  # nb, ng, capacity, expiry (no counters)
        3,  # admissions
        1, 1, 200, 30, 30, -1, -1,  # spec number, bucket costs, counter costs, seeds (-1: none)
        2, 1,
        1, 1, 300, 45, 45, 7_000, -1,
    ]  # fmt: skip


def test_a_settlement_run_is_the_beginning_of_an_admission_run():
    assert settle_call(NOW_MS, settlements()) == (
        ["tokios:rl:{o1}:k1:tpm", "tokios:spend:{o1}:k1:2026-11"],
        [NOW_MS, 1, 1, 1000, 330, -35],
    )
    assert settle_call(NOW_MS, None) == ([], [NOW_MS, 0, 0])


def test_replies_are_read_back_into_decisions():
    ok = decision([0, -1, 0, 59_000, 800_500, 30, 1_030], buckets=2)
    limited = decision([1, 1, 24_000, 3_000, -300_000], buckets=2)
    seed = decision([-1, 0, 1], buckets=2)

    assert (ok.status, ok.levels, ok.used) == ("ok", [59.0, 800.5], [30, 1_030])
    assert (limited.status, limited.denied, limited.retry_ms, limited.levels) == ("limited", 1, 24_000, [3.0, -300.0])
    assert (seed.status, seed.missing) == ("seed", [0, 1])


# --- the Lua reader, on a real Redis ----------------------------------------------------------------

# Appended to the reader: run it over the whole of KEYS and ARGV and return what it read.
DUMP = """
local backs, deltas, k, p = read_settlements()
local specs, admissions
specs, k, p = read_specs(k, p)
admissions, p = read_admissions(specs, p)
local out = {{}, {}, {}, {}, {now, k - 1, p - 1}}
for _, b in ipairs(backs) do out[1][#out[1] + 1] = {b.key, b.cap, b.back} end
for _, d in ipairs(deltas) do out[2][#out[2] + 1] = {d.key, d.delta} end
for _, s in ipairs(specs) do out[3][#out[3] + 1] = {s.keys, s.caps, s.counters, s.limits, s.expires} end
for _, a in ipairs(admissions) do
  local number
  for i, s in ipairs(specs) do if s == a.spec then number = i end end
  out[4][#out[4] + 1] = {number, a.need, a.cost, a.seed}
end
return out
"""


@pytest.fixture
def read_by_lua():
    client = redis.Redis.from_url(os.environ["REDIS_URL"])

    def read(keys: list, args: list) -> list:
        return client.eval(lua("args.lua") + DUMP, len(keys), *keys, *args)

    yield read
    client.close()


def spec_as_read(buckets: list[Bucket], budgets: list[Budget]) -> list:
    return [
        [b.key.encode() for b in buckets],
        [b.capacity for b in buckets],
        [g.key.encode() for g in budgets],
        [-1 if g.limit is None else g.limit for g in budgets],
        DECEMBER_2 if budgets else 0,
    ]


@pytest.mark.redis
@pytest.mark.asyncio
async def test_the_lua_reads_an_admission_run_as_it_was_built(read_by_lua):
    keys, args = admission_run().call(settlements())

    read = read_by_lua(keys, args)

    assert read == [
        [[b"tokios:rl:{o1}:k1:tpm", 1000, 330]],
        [[b"tokios:spend:{o1}:k1:2026-11", -35]],
        [spec_as_read(*K1), spec_as_read(*K2)],
        [[1, [1, 200], [30, 30], [-1, -1]], [2, [1], [], []], [1, [1, 300], [45, 45], [7_000, -1]]],
        [NOW_MS + 5, len(keys), len(args)],  # every key and argument read, none past the end
    ]


@pytest.mark.redis
def test_the_lua_reads_a_settlement_run_and_an_empty_one(read_by_lua):
    keys, args = settle_call(NOW_MS, settlements())

    read = read_by_lua(keys, [*args, 0, 0])  # what follows in an admission run: no specs, no admissions
    empty = read_by_lua(*AdmissionRun(NOW_MS).call(None))

    assert read[:2] == [[[b"tokios:rl:{o1}:k1:tpm", 1000, 330]], [[b"tokios:spend:{o1}:k1:2026-11", -35]]]
    assert read[4] == [NOW_MS, 2, len(args) + 2]
    assert empty == [[], [], [], [], [NOW_MS, 0, 5]]
