"""TEST DOUBLE: a scripted model behind `proxy.calls.UpstreamCall`, for in-process tests of the /v1 path.

`Upstream` is installed as `settings.UPSTREAM_CALL` (the `upstream` fixture in conftest.py), where
`proxy.upstream.open_call` would otherwise make a `TunnelCall`. Each call the gateway opens answers
with the next script given to `Upstream.answer()`; a script is a sequence of

- `Started(status, headers)`, `Data(bytes)`, `Ended()`, `Failed(code, message)`: what the tunnel
  delivers, in the order the tunnel would;
- `CallError(...)` first: no connector took the request (raised from `start()`, as TunnelCall's
  dispatch raises it);
- `Delay(seconds)`: the model takes that long before its next item (a wait longer than the
  reader's timeout is a timeout, as it would be);
- `Gate(event)`: the model sends nothing more until the test's `event` is set (the same timeout);
  `Signal(event)`: sets `event` when the script gets there, and goes on at once — together they
  order two calls without a clock;
- `SILENCE`: the model sends nothing more, however long one waits (also what a call without a
  script does).

A script may name the connector that takes it (`answer(..., connector=...)`). A retry on another
connector (proxy/failover.py) takes the next script if that one names a connector the retry may go
to; otherwise it finds no other connector (it is kept in `unrouted`, not in `calls`).

Every `ScriptedCall` records what the surface sent (`path`, `method`, `body` as JSON), how often it
was cancelled, and whether anything is still reading it. Behaviour at each step follows
`proxy.tunnel.router.TunnelCall`: a `Failed` before the start raises the same `CallError`, silence
until the first-byte timeout cancels the call and raises a 504.

The helpers below write what an OpenAI-compatible model server sends: stream events (`delta`,
`tool_call_deltas`, `FINISH`, `USAGE`, `DONE`) and whole bodies (`chat_body`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import orjson

from proxy.calls import CallError, CallTrace, Data, Ended, Failed, Started
from proxy.tunnel.router import call_error

SILENCE = "silence"
CONNECTOR_ID = "conn_scripted01"
PROMPT_TOKENS, COMPLETION_TOKENS = 1000, 500


@dataclass(frozen=True)
class Delay:
    seconds: float


@dataclass(frozen=True)
class Gate:
    event: asyncio.Event


@dataclass(frozen=True)
class Signal:
    event: asyncio.Event


class Script(list):
    """A call's items, and the id of the connector that takes it."""

    def __init__(self, items, connector: str | None) -> None:
        super().__init__(items)
        self.connector = connector


class Upstream:
    """Stands in for the tunnel: each call the gateway opens answers with the next script."""

    def __init__(self) -> None:
        self.scripts: list[list] = []
        self.unrouted: list[ScriptedCall] = []  # retries no connector could take (none was scripted)
        self.calls: list[ScriptedCall] = []
        self.silent = asyncio.Event()  # set once a call waits on a silent model
        self.cancel_takes = 0.0  # seconds a cancel takes to send (to another process, say)

    def answer(self, *items, connector: str | None = None) -> None:
        """The next call's script; `connector`: the id of the connector that takes it (only a
        script that names one may serve a retry)."""
        self.scripts.append(Script(items, connector))

    def __call__(
        self,
        *,
        deployment_id: int,
        request_id: str,
        method: str,
        path: str,
        body: bytes,
        org_id: int,
        key_id: int,
        trace: CallTrace | None = None,
        affinity: str = "",
        avoid: frozenset[str] = frozenset(),
    ) -> ScriptedCall:
        upcoming = self.scripts[0] if self.scripts else None
        if avoid and not (isinstance(upcoming, Script) and upcoming.connector and upcoming.connector not in avoid):
            # A retry elsewhere, with no script for it: the scripted model has no other connector.
            nowhere = ScriptedCall(
                self,
                [CallError(503, "connector_offline", "no other connector")],
                deployment_id=deployment_id,
                request_id=request_id,
                method=method,
                path=path,
                body=body,
            )
            nowhere.affinity, nowhere.avoid = affinity, avoid
            self.unrouted.append(nowhere)
            return nowhere
        script = self.scripts.pop(0) if self.scripts else [SILENCE]
        connector = (script.connector if isinstance(script, Script) else None) or CONNECTOR_ID
        call = ScriptedCall(
            self, script, deployment_id=deployment_id, request_id=request_id, method=method, path=path, body=body
        )
        call.trace = trace
        call.affinity, call.avoid = affinity, avoid  # what the router was asked for (proxy/failover.py)
        if call.connector_id:
            call.connector_id = connector
        self.calls.append(call)
        return call

    @property
    def call(self) -> ScriptedCall:
        assert len(self.calls) == 1, f"{len(self.calls)} upstream calls"
        return self.calls[0]


class ScriptedCall:
    """One scripted call; an `UpstreamCall` (proxy/calls.py)."""

    def __init__(
        self,
        upstream: Upstream,
        script: list,
        *,
        deployment_id: int,
        request_id: str,
        method: str,
        path: str,
        body: bytes,
    ) -> None:
        self.upstream = upstream
        self.items = deque(script)
        self.deployment_id = deployment_id
        self.request_id = request_id
        self.method = method
        self.path = path
        self.raw_body = body
        self.body = orjson.loads(body) if body else None
        self.finished = False
        # The connector that took the call: none when no connector did (a CallError first).
        self.connector_id = "" if script and isinstance(script[0], CallError) else CONNECTOR_ID
        self.cancels = 0
        self.cancel_takes = upstream.cancel_takes
        self.reading = False  # someone is waiting in start() or next_item() right now
        self.queue_wait_ms = 0  # the scripted model always has a free slot
        self.admit_timeout: float | None = None  # what admit() was given, if it was called
        self.trace: CallTrace | None = None  # told of the steps as TunnelCall tells it (tracing on)
        self.affinity = ""
        self.avoid: frozenset[str] = frozenset()

    async def admit(self, timeout: float, notice: float | None = None) -> int:
        self.admit_timeout = timeout
        if self.items and isinstance(self.items[0], CallError):
            raise self.items.popleft()  # no connector took it, as TunnelCall's admission raises it
        return 0

    async def start(self, timeout: float) -> Started:
        trace = self.trace
        if trace is not None and self.connector_id:  # taken at once, as by a connector with a free slot
            trace.dispatching()
            trace.dispatched("sent", self.connector_id)
        item = await self._next(timeout)
        match item:
            case Started():
                if trace is not None:
                    trace.response_started(item.status)
                return item
            case Failed():
                self.finished = True
                raise call_error(item)
            case CallError():
                raise item  # no connector took it: TunnelCall raises from its dispatch, unfinished
            case None:
                await self.cancel()
                raise CallError(504, "upstream_timeout", "The model did not answer in time.")
        raise AssertionError(f"a script must begin with Started, Failed, CallError or silence, not {item!r}")

    async def next_item(self, timeout: float) -> Data | Ended | Failed | None:
        item = await self._next(timeout)
        if isinstance(item, Ended | Failed):
            self.finished = True
        return item

    async def _next(self, timeout: float):
        self.reading = True
        try:
            deadline = time.monotonic() + timeout
            while self.items and isinstance(self.items[0], Delay | Gate | Signal):
                if isinstance(self.items[0], Signal):
                    self.items.popleft().event.set()
                    continue
                if isinstance(self.items[0], Gate):
                    gate = self.items[0].event
                    if not gate.is_set():
                        try:
                            await asyncio.wait_for(gate.wait(), max(0.0, deadline - time.monotonic()))
                        except TimeoutError:
                            return None
                    self.items.popleft()
                    continue
                delay = self.items[0]
                left = deadline - time.monotonic()
                if delay.seconds > left:
                    # Waited out the reader's timeout: the rest of the delay is still to come.
                    await asyncio.sleep(max(0.0, left))
                    self.items[0] = Delay(delay.seconds - max(0.0, left))
                    return None
                await asyncio.sleep(delay.seconds)
                self.items.popleft()
            if not self.items or self.items[0] == SILENCE:
                self.upstream.silent.set()
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                return None
            return self.items.popleft()
        finally:
            self.reading = False

    async def cancel(self) -> None:
        self.cancels += 1
        self.finished = True
        if self.cancel_takes:
            await asyncio.sleep(self.cancel_takes)


# --- what an OpenAI-compatible model server sends ---------------------------------------------------


def event(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def chunk(choices: list, **extra) -> bytes:
    """One Chat Completions stream event, as the model writes it."""
    return event({"id": "up-1", "object": "chat.completion.chunk", "model": "upstream", "choices": choices, **extra})


def delta(text: str) -> bytes:
    return chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])


def finish(reason: str = "stop") -> bytes:
    return chunk([{"index": 0, "delta": {}, "finish_reason": reason}])


def usage(prompt: int = PROMPT_TOKENS, completion: int = COMPLETION_TOKENS) -> bytes:
    return chunk(
        [], usage={"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    )


def tool_call_deltas(call_id: str, name: str, arguments: str, *, pieces: int = 2) -> list[bytes]:
    """A tool call as models stream it: the id and name first, then the arguments in pieces."""
    step = max(1, -(-len(arguments) // pieces))
    head = {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
    events = [chunk([{"index": 0, "delta": {"role": "assistant", "tool_calls": [head]}, "finish_reason": None}])]
    for i in range(0, len(arguments), step):
        part = {"index": 0, "function": {"arguments": arguments[i : i + step]}}
        events.append(chunk([{"index": 0, "delta": {"tool_calls": [part]}, "finish_reason": None}]))
    return events


FINISH = finish()
USAGE = usage()
DONE = b"data: [DONE]\n\n"


def streamed(*texts: str, usage_event: bytes = USAGE) -> list:
    """A whole streamed answer: Started, one Data per text, then the finish, usage and [DONE]."""
    return [
        Started(200, {"content-type": "text/event-stream"}),
        *(Data(delta(t)) for t in texts),
        Data(FINISH + usage_event + DONE),
        Ended(12, 3),
    ]


USAGE_REPORT = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS}


def chat_body(message: dict | None = None, *, finish_reason: str = "stop", usage: dict | None = USAGE_REPORT) -> bytes:
    """A non-streamed Chat Completions answer (`usage=None`: the model reported none)."""
    choice = {
        "index": 0,
        "message": message or {"role": "assistant", "content": "Hello"},
        "finish_reason": finish_reason,
    }
    body: dict[str, object] = {"id": "up-1", "object": "chat.completion", "model": "upstream", "choices": [choice]}
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)


def whole(body: bytes, status: int = 200) -> list:
    """A non-streamed answer: Started, the body, Ended."""
    return [Started(status, {"content-type": "application/json"}), Data(body), Ended(12, 3)]
