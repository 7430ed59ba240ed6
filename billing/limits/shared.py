"""The Redis limiter (production): limits shared exactly by every process, in batched script runs."""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import math
import time

from redis.exceptions import NoScriptError

from lib.loops import for_this_loop
from lib.redis import get_sync_redis
from lib.redis_pipe import RedisPipe, ReplyError, Script, get_pipe

from .core import Bucket, Budget, Decision, Reservation, tag_of
from .scripts import ACQUIRE, SETTLE, AdmissionRun, Settlements, Spec, decision, settle_call

log = logging.getLogger("tokios.limits")

SETTLE_DELAY = 0.02  # seconds a settlement may wait for an admission run to take it along (then sent alone)


class _LoopState:
    """What the limiter keeps per event loop: its Redis pipe and the admission runs of this turn."""

    __slots__ = ("loop", "pipe", "runs")

    def __init__(self, loop: asyncio.AbstractEventLoop, pipe: RedisPipe) -> None:
        self.loop = loop
        self.pipe = pipe
        self.runs: dict[str, AdmissionRun] = {}  # org hash tag -> admissions waiting for the turn's end


class RedisLimiter:
    """Scripts go through `lib.redis_pipe`: commands issued in the same loop turn share one write
    and one read, and a command costs a few µs of loop time instead of redis-py's ~150 µs.

    Admissions are not sent one by one either: those of one org started in the same loop turn go
    in one script run at the end of the turn (an `AdmissionRun`), which decides them in order, each
    seeing the charges of the ones before it. A run is atomic whatever it holds, so exactness
    across processes is unchanged; what changes is that Redis parses one command and reads and
    writes each key once per run (under load, several requests of a turn share one key's buckets).
    Alone in its turn, an admission waits for no one: its run leaves when the turn ends.

    Settlements are not sent one by one: they are summed per org in memory and ride along with the
    next admission run for that org (the acquire script applies them first), or are sent on their
    own after SETTLE_DELAY if no admission comes. So a steady stream of requests costs at most one
    script run per request, and a request always sees the settlements this process finished
    before it.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._states: dict = {}  # per event loop: its pipe and its admissions waiting to be sent
        self._cached: tuple[asyncio.AbstractEventLoop, _LoopState] | None = None
        self._pending: set[asyncio.Future] = set()  # settlement runs sent on their own, in flight
        self._waiting: dict[str, Settlements] = {}  # org hash tag -> its settlements not sent yet
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        atexit.register(self._flush_at_exit)

    def _state(self) -> _LoopState:
        """The running loop's pipe and runs (looked up once per loop, not per request). One tuple
        is swapped, so loops running in other threads never see each other's state."""
        loop = asyncio.get_running_loop()
        cached = self._cached
        if cached is None or cached[0] is not loop:
            state = for_this_loop(
                self._states, self.url, lambda: _LoopState(loop, get_pipe(self.url, scripts=(ACQUIRE, SETTLE)))
            )
            cached = self._cached = (loop, state)
        return cached[1]

    # --- admissions ---------------------------------------------------------------------------

    async def acquire(
        self,
        buckets: list[Bucket],
        budgets: list[Budget],
        now_ms: int,
        seeds: dict[str, int] | None = None,
        spec: Spec | None = None,
    ) -> Decision:
        """Check and charge in Redis. `spec` is `Spec(buckets, budgets)`, passed by callers that
        keep one (see `plan`) so that a run can send it once for all the admissions sharing it."""
        if not buckets and not budgets:
            return Decision(status="ok")
        if spec is None:
            spec = Spec(buckets, budgets)
        state = self._state()
        runs = state.runs
        if not runs:
            state.loop.call_soon(self._send_admissions, state)
        run = runs.get(spec.tag)
        if run is None:
            run = runs[spec.tag] = AdmissionRun(now_ms)
        future = state.loop.create_future()
        run.add(spec, buckets, budgets, seeds, now_ms, future)
        return decision(await future, len(buckets))

    def _send_admissions(self, state: _LoopState) -> None:
        """One script run per org for the admissions of the last loop turn, its settlements riding along."""
        runs, state.runs = state.runs, {}
        for tag, run in runs.items():
            keys, args = run.call(self._waiting.pop(tag, None))
            reply = _send(state.pipe, ACQUIRE, keys, args)
            reply.add_done_callback(functools.partial(self._answer, run.futures, keys, args, False))
        state.pipe.flush()  # this already is the end of the turn the admissions came in

    def _answer(
        self, futures: list[asyncio.Future], keys: list, args: list, retried: bool, reply: asyncio.Future
    ) -> None:
        exc = ConnectionError("the admission was cancelled") if reply.cancelled() else reply.exception()
        if _forgotten(exc) and not retried:  # Redis was flushed: load the script and run again, once
            retry = asyncio.ensure_future(self._state().pipe.evalsha(ACQUIRE, keys, args))
            retry.add_done_callback(functools.partial(self._answer, futures, keys, args, True))
            return
        if exc is None:
            results = reply.result()
            if isinstance(results, list) and len(results) == len(futures):
                for future, result in zip(futures, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                return
            exc = ReplyError(f"the admission script answered {results!r} to {len(futures)} admissions")
        for future in futures:
            if not future.done():
                future.set_exception(exc)

    # --- settlements --------------------------------------------------------------------------

    def settle_soon(self, reservation: Reservation, actual_tokens: int, actual_cost: int, now_ms: int) -> None:
        """Settle after the response: with the org's next admission run, or on its own once it has
        waited SETTLE_DELAY. Until then the reservation stays charged, which errs on the safe side."""
        keys = reservation.buckets or reservation.budgets
        if not keys:
            return
        tag = reservation.tag or tag_of(keys[0].key)  # every key of a request carries its org's tag
        waiting = self._waiting.get(tag)
        if waiting is None:
            waiting = Settlements(time.monotonic())
        waiting.add(reservation, actual_tokens, actual_cost)
        if not (waiting.backs or waiting.deltas):
            return  # it used exactly what it reserved
        self._waiting[tag] = waiting
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_settlements_sync()
            return
        if self._flush_handle is not None and self._flush_loop is loop:
            return  # a flush is already due on this loop (a handle left by a finished loop is not)
        self._flush_loop = loop
        self._flush_handle = loop.call_later(SETTLE_DELAY, self._flush_settlements)

    def _flush_settlements(self, *, due_only: bool = True) -> None:
        """Send the settlements that waited SETTLE_DELAY for an admission run to take them, and
        wake up again for the others: under steady traffic the runs take nearly all of them."""
        self._flush_handle = None
        pipe = self._state().pipe
        now_ms = int(time.time() * 1000)
        now = time.monotonic()
        next_due = math.inf
        for tag, waiting in list(self._waiting.items()):
            due = waiting.since + SETTLE_DELAY
            if due_only and due > now + SETTLE_DELAY / 10:
                next_due = min(next_due, due)
                continue
            del self._waiting[tag]
            keys, args = settle_call(now_ms, waiting)
            future = _send(pipe, SETTLE, keys, args)
            self._pending.add(future)
            future.add_done_callback(functools.partial(self._settled, keys, args, False))
        if next_due < math.inf:
            self._flush_loop = asyncio.get_running_loop()
            self._flush_handle = self._flush_loop.call_later(next_due - now, self._flush_settlements)

    def _settled(self, keys: list, args: list, retried: bool, future: asyncio.Future) -> None:
        self._pending.discard(future)
        exc = None if future.cancelled() else future.exception()
        if exc is None:
            return
        if _forgotten(exc) and not retried:  # Redis was flushed meanwhile
            retry = asyncio.ensure_future(self._state().pipe.evalsha(SETTLE, keys, args))
            self._pending.add(retry)
            retry.add_done_callback(functools.partial(self._settled, keys, args, True))
            return
        log.warning("could not settle a rate-limit reservation in Redis: %r", exc)

    def flush_settlements_sync(self) -> None:
        """Send what is waiting with the blocking client (no event loop; process exit)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        now_ms = int(time.time() * 1000)
        client = get_sync_redis()
        for tag in list(self._waiting):
            keys, args = settle_call(now_ms, self._waiting.pop(tag))
            try:
                client.evalsha(SETTLE.sha, len(keys), *keys, *args)
            except NoScriptError:
                client.script_load(SETTLE.source)
                client.evalsha(SETTLE.sha, len(keys), *keys, *args)

    def _flush_at_exit(self) -> None:
        if self._waiting:
            try:
                self.flush_settlements_sync()
            except Exception:
                log.warning("could not settle rate-limit reservations at exit", exc_info=True)

    async def drain(self) -> None:
        """Send the summed settlements now and wait for them (tests, shutdown)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._waiting:
            self._flush_settlements(due_only=False)
        loop = asyncio.get_running_loop()
        # A settlement sent from an event loop that has since closed can never finish (tests).
        self._pending = {f for f in self._pending if f.get_loop() is loop}
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def spent(self, budget_key: str) -> int | None:
        raw = await self._state().pipe.execute("GET", budget_key)
        return None if raw is None else int(raw)


def _send(pipe: RedisPipe, script: Script, keys: list, args: list) -> asyncio.Future:
    """Queue a script run: straight onto a live connection, else through a (re)connect."""
    if pipe.connected:
        return pipe.send_nowait("EVALSHA", script.sha, len(keys), *keys, *args)
    return asyncio.ensure_future(pipe.evalsha(script, keys, args))


def _forgotten(exc: BaseException | None) -> bool:
    """Redis answered NOSCRIPT: it lost its scripts (flushed or restarted) since the pipe connected."""
    return isinstance(exc, ReplyError) and str(exc).startswith("NOSCRIPT")
