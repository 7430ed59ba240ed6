"""What the model server speaks natively and which models it serves, learned before every `hello`.

The server passes a client's /v1/messages or /v1/responses straight through to a model server
that speaks it (`hello.surfaces`) and translates it to chat completions otherwise; a deployment
made from one connector lists the upstream's models (`hello.models`). Both are asked again on
every connection: the model server may have been upgraded or restarted with other models.

Asking must cost the model server nothing: no token is generated and no model is loaded. A route
is asked with a body that is not JSON (``{``): a server that has the route fails to parse it
(400, 422, or llama.cpp's 500), a server that has not answers 404 or 405 (501: the route exists
but is switched off, e.g. llama.cpp's embeddings without ``--embeddings``). A path no server has
is asked the same way, as the control: a server that answers everything alike (a catch-all, a
proxy wanting a key, a model still loading) cannot be read, and then nothing is announced
(`surfaces` None), so the server translates as it would for an older connector. llama.cpp's
``/tokenize`` is asked to tokenize the empty string and must answer with a token list.

Everything the upstream says is hostile: a few seconds in all, bodies read up to a limit, model
names checked and counted (`protocol.MAX_MODELS`, `protocol.MAX_MODEL_NAME`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from . import __version__
from .config import Config, public_url, upstream_origin
from .protocol import MAX_MODEL_NAME, MAX_MODELS, PROTOCOL_VERSION, SURFACES, Hello, JSONDecodeError, loads

log = logging.getLogger("tokios_connector")

PROBE_BUDGET = 3.0  # seconds for every question together: they are asked at once
REQUEST_TIMEOUT = 2.5  # connect, and between two reads, for each question
MODELS_BODY_LIMIT = 1024 * 1024  # bytes read of a model list; a longer one is not read at all
SMALL_BODY_LIMIT = 64 * 1024  # bytes read of any other answer
MAX_SERVER_TEXT = 80  # characters kept of what the model server says it is

NOT_A_ROUTE = frozenset({404, 405, 501})
NOT_JSON = b"{"
# No model server has this path; how it is answered is how this server answers "no such route".
CONTROL_PATH = "/tokios-probe-no-such-route"
# The routes under the upstream base each surface is served at (llama.cpp's /tokenize, at the
# server's root, is asked separately).
SURFACE_PATHS = {
    "chat": "/chat/completions",
    "messages": "/messages",
    "count_tokens": "/messages/count_tokens",
    "responses": "/responses",
    "embeddings": "/embeddings",
}
# The probe says who it is, so a model server's access log (and a test double) can tell it apart
# from model traffic.
USER_AGENT = f"tokios-connector-probe/{__version__}"


@dataclass(frozen=True)
class Findings:
    """What the probe learned. None: the upstream did not say (or could not be read)."""

    surfaces: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    server: str | None = None  # e.g. "llama.cpp b6000-abc", "Ollama 0.12.3"
    answered: bool = False  # did the upstream answer anything at all
    control_status: int | None = None  # how it answered a path no server has
    models_dropped: int = 0  # names left out: invalid, repeated or beyond MAX_MODELS

    def summary(self) -> str:
        """One line for the log: who answered, what it speaks, how many models it serves."""
        if self.surfaces is None:
            speaks = "could not tell"
        else:
            speaks = ", ".join(self.surfaces) or "none of the surfaces"
        models = "not listed" if self.models is None else str(len(self.models))
        dropped = f" ({self.models_dropped} left out)" if self.models_dropped else ""
        return f"{self.server or 'the model server'} speaks {speaks}; models: {models}{dropped}"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes | None  # None: longer than the limit


async def probe(
    http: httpx.AsyncClient, base: str, upstream_key: str | None, *, budget: float = PROBE_BUDGET
) -> Findings:
    """Ask the upstream at `base` (e.g. http://127.0.0.1:8080/v1) what it speaks and serves."""
    origin = upstream_origin(base)
    headers = {"user-agent": USER_AGENT, "accept": "application/json"}
    if upstream_key:
        headers["authorization"] = f"Bearer {upstream_key}"
    post_headers = {**headers, "content-type": "application/json"}

    def ask(
        method: str, url: str, body: bytes | None = None, limit: int = SMALL_BODY_LIMIT
    ) -> Awaitable[Answer | None]:
        return fetch(http, method, url, headers=post_headers if body is not None else headers, body=body, limit=limit)

    questions = {
        "control": ask("POST", base + CONTROL_PATH, NOT_JSON),
        **{name: ask("POST", base + path, NOT_JSON) for name, path in SURFACE_PATHS.items()},
        "tokenize": ask("POST", origin + "/tokenize", b'{"content": ""}'),
        "models": ask("GET", base + "/models", limit=MODELS_BODY_LIMIT),
        "tags": ask("GET", origin + "/api/tags", limit=MODELS_BODY_LIMIT),  # Ollama's own list
        "props": ask("GET", origin + "/props"),  # llama.cpp: its build
        "version": ask("GET", origin + "/api/version"),  # Ollama: its version
    }
    answers = await gather_within(questions, budget)
    statuses = {name: None if answer is None else answer.status for name, answer in answers.items()}
    surfaces = read_surfaces(
        statuses["control"], {name: statuses[name] for name in SURFACE_PATHS}, tokenizes(answers["tokenize"])
    )
    models, dropped = None, 0
    for source in ("models", "tags"):
        listed = json_of(answers[source])
        if listed is not None:
            found = model_names(listed)
            if found is not None:
                models, dropped = found
                break
    return Findings(
        surfaces=surfaces,
        models=models,
        server=server_name(json_of(answers["props"]), json_of(answers["version"])),
        answered=any(answer is not None for answer in answers.values()),
        control_status=statuses["control"],
        models_dropped=dropped,
    )


async def gather_within(questions: dict[str, Awaitable[Answer | None]], budget: float) -> dict[str, Answer | None]:
    """Every answer that came within `budget` seconds; the rest are given up (None)."""
    tasks = {name: asyncio.ensure_future(question) for name, question in questions.items()}
    _, pending = await asyncio.wait(tasks.values(), timeout=budget)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return {name: None if task in pending else task.result() for name, task in tasks.items()}


async def fetch(
    http: httpx.AsyncClient, method: str, url: str, *, headers: dict[str, str], body: bytes | None, limit: int
) -> Answer | None:
    """The status and (at most `limit` bytes of) body; None when the upstream did not answer."""
    try:
        async with http.stream(
            method, url, headers=headers, content=body, timeout=REQUEST_TIMEOUT, follow_redirects=False
        ) as response:
            data = bytearray()
            async for chunk in response.aiter_raw():
                data += chunk
                if len(data) > limit:
                    return Answer(response.status_code, None)
            return Answer(response.status_code, bytes(data))
    except (httpx.HTTPError, OSError):
        return None


def read_surfaces(control: int | None, routes: dict[str, int | None], tokenize: bool) -> tuple[str, ...] | None:
    """The surfaces whose route the upstream has, from how it answered each and the control path."""
    if control is None:
        return None  # the upstream did not answer: nothing can be said
    native = {name for name, status in routes.items() if status is not None and is_route(status, control)}
    if control not in NOT_A_ROUTE and not native:
        return None  # it answers every path alike (a catch-all, a key it wants): it cannot be read
    if tokenize:
        native.add("tokenize")
    return tuple(name for name in SURFACES if name in native)


def is_route(status: int, control: int) -> bool:
    return status not in NOT_A_ROUTE and status != control


def tokenizes(answer: Answer | None) -> bool:
    """llama.cpp's /tokenize answered the empty string with a token list."""
    data = json_of(answer)
    return isinstance(data, dict) and isinstance(data.get("tokens"), list)


def json_of(answer: Answer | None) -> Any:
    """The JSON of a 200 answer read in whole; None for anything else."""
    if answer is None or answer.status != 200 or answer.body is None:
        return None
    try:
        return loads(answer.body)
    except (JSONDecodeError, ValueError, RecursionError):  # RecursionError: a deeply nested answer
        return None


def model_names(data: Any) -> tuple[tuple[str, ...], int] | None:
    """The model names of an OpenAI list (`data[].id`) or Ollama's /api/tags (`models[].name`),
    valid ones only, without repeats, at most MAX_MODELS; and how many were left out. None: `data`
    is no model list."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("data"), list):
        items: Iterable[Any] = (item.get("id") if isinstance(item, dict) else None for item in data["data"])
    elif isinstance(data.get("models"), list):
        items = (item.get("name") or item.get("model") if isinstance(item, dict) else None for item in data["models"])
    else:
        return None
    names: dict[str, None] = {}
    dropped = 0
    for name in items:
        if len(names) < MAX_MODELS and valid_model_name(name) and name not in names:
            names[name] = None
        else:
            dropped += 1
    return tuple(names), dropped


def valid_model_name(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_MODEL_NAME and name.isprintable() and name == name.strip()


def server_name(props: Any, version: Any) -> str | None:
    """Who the model server says it is: llama.cpp's /props tells its build, Ollama's /api/version
    its version."""
    if isinstance(props, dict) and ("build_info" in props or "total_slots" in props):
        build = props.get("build_info")
        return "llama.cpp" + (f" {clean(build)}" if isinstance(build, str) and clean(build) else "")
    if isinstance(version, dict) and isinstance(version.get("version"), str) and clean(version["version"]):
        return f"Ollama {clean(version['version'])}"
    return None


def clean(text: str) -> str:
    """Upstream text fit for a log line: printable and short."""
    return "".join(c for c in text[: MAX_SERVER_TEXT * 4] if c.isprintable())[:MAX_SERVER_TEXT].strip()


def hello(config: Config, slots: int, findings: Findings | None) -> Hello:
    """The `hello` this connector sends, announcing what the probe found (nothing without one)."""
    return Hello(
        protocol=PROTOCOL_VERSION,
        version=__version__,
        upstream=public_url(config.upstream),
        model=config.model,
        max_concurrency=config.max_concurrency,
        slots=slots,
        surfaces=None if findings is None else findings.surfaces,
        models=None if findings is None else findings.models,
    )


async def skipped() -> Findings | None:
    """What `--no-probe` learns: nothing."""
    return None
