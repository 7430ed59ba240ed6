"""What the limiter works with: the records it is handed, what a request asks of it (buckets and
budgets), what it decides, and what an admitted request holds until it is settled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

WINDOW_MS = 60_000  # RPM and TPM: per minute
MAX_TOKENS = 2**31 - 1  # a request's estimated tokens are bounded to this before any arithmetic
# Redis's Lua counts in doubles: past 2**53 a counter loses units, and far past it is written in
# exponent form, which INCRBY refuses. Costs are bounded to this before they reach one.
MAX_MICROS = 2**53 - 1


# --- what the caller hands over (the gateway's access records have these attributes) -------------


class KeyLimits(Protocol):
    """An API key's access record, as far as limits are concerned: its own and its org's limits."""

    @property
    def id(self) -> int: ...
    @property
    def org_id(self) -> int: ...
    @property
    def org_slug(self) -> str: ...
    @property
    def rpm_limit(self) -> int | None: ...
    @property
    def tpm_limit(self) -> int | None: ...
    @property
    def budget_micros(self) -> int | None: ...
    @property
    def org_rpm_limit(self) -> int | None: ...
    @property
    def org_tpm_limit(self) -> int | None: ...
    @property
    def org_budget_micros(self) -> int | None: ...


class DeploymentPrices(Protocol):
    """A deployment's access record, as far as limits are concerned: what a token costs on it."""

    @property
    def id(self) -> int: ...
    @property
    def price_input_micros(self) -> int: ...  # micro-USD per million tokens
    @property
    def price_output_micros(self) -> int: ...


# --- what a request asks ---------------------------------------------------------------------------


class Bucket(NamedTuple):
    """One RPM or TPM limit, with what this request takes from it."""

    key: str  # its Redis key (also its name in process)
    scope: str  # "key" | "org"
    kind: str  # "requests" | "tokens"
    capacity: int
    cost: int


class Budget(NamedTuple):
    """One month's spend counter (micro-USD), with an optional cap and what this request reserves."""

    key: str
    scope: str  # "key" | "org"
    org_id: int
    key_id: int | None
    month: str  # "2026-11"
    limit: int | None
    cost: int


@dataclass(slots=True)
class Decision:
    status: str  # "ok" | "limited" | "over_budget" | "seed"
    denied: int = -1  # index into buckets + budgets of the first refusal
    retry_ms: int = 0
    levels: list[float] = field(default_factory=list)  # units left per bucket (after charging, if ok)
    used: list[int] = field(default_factory=list)  # spend per budget (after charging, if ok)
    missing: list[int] = field(default_factory=list)  # budgets needing a seed


@dataclass(slots=True)
class Reservation:
    """What an admitted request took; given back or topped up once its real usage is known."""

    buckets: Sequence[Bucket]
    budgets: Sequence[Budget]
    tag: str = ""  # the org's hash tag, if the caller knows it
    settled: bool = False

    @property
    def tokens_reserved(self) -> dict[str, int]:
        return {b.key: b.cost for b in self.buckets if b.kind == "tokens"}


def org_tag(org_id: int) -> str:
    """The hash tag every Redis key of an org carries, so one script run stays in one cluster slot."""
    return f"{{o{org_id}}}"


def tag_of(key: str) -> str:
    """The hash tag inside a bucket's or counter's key."""
    return key[key.index("{") : key.index("}") + 1]
