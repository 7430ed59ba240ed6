"""``--upstream auto``: find the model server running on this machine.

The usual local model servers are asked at once on their default ports, each for its model list
(GET /v1/models); the first in the order below that answers with one is used. A port that
answers something else (a web app on :8000, say) is not taken for a model server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from .probe import MODELS_BODY_LIMIT, USER_AGENT, fetch, json_of, model_names

AUTO = "auto"
DISCOVER_BUDGET = 2.0  # seconds for every candidate together


@dataclass(frozen=True)
class Candidate:
    name: str
    base: str


# In order of preference.
CANDIDATES = (
    Candidate("llama.cpp", "http://127.0.0.1:8080/v1"),
    Candidate("Ollama", "http://127.0.0.1:11434/v1"),
    Candidate("vLLM", "http://127.0.0.1:8000/v1"),
    Candidate("LM Studio", "http://127.0.0.1:1234/v1"),
)


async def find_upstream(
    candidates: tuple[Candidate, ...] = CANDIDATES,
    *,
    upstream_key: str | None = None,
    budget: float = DISCOVER_BUDGET,
) -> Candidate | None:
    """The first candidate that lists its models within `budget` seconds, or None."""
    headers = {"user-agent": USER_AGENT, "accept": "application/json"}
    if upstream_key:
        headers["authorization"] = f"Bearer {upstream_key}"
    # Environment proxies must not answer for a local port.
    async with httpx.AsyncClient(trust_env=False, headers={"accept-encoding": "identity"}) as http:

        async def lists_models(candidate: Candidate) -> bool:
            answer = await fetch(
                http, "GET", candidate.base + "/models", headers=headers, body=None, limit=MODELS_BODY_LIMIT
            )
            return model_names(json_of(answer)) is not None

        tasks = [asyncio.create_task(lists_models(candidate)) for candidate in candidates]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        try:
            for candidate, task in zip(candidates, tasks, strict=True):
                try:
                    # shield: a candidate that is slow now keeps running for the next one's wait.
                    if await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - loop.time())):
                        return candidate
                except (TimeoutError, asyncio.TimeoutError):  # noqa: UP041 - distinct classes on Python 3.10
                    continue
            return None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def not_found_message(candidates: tuple[Candidate, ...] = CANDIDATES) -> str:
    tried = ", ".join(f"{c.name} ({c.base})" for c in candidates)
    return (
        f"--upstream auto found no model server: none of {tried} listed its models. "
        "Start one, or give its URL with --upstream"
    )
