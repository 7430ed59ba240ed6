"""Hostile inputs: JSON of any shape, numbers at the edges of every integer type, nesting past the
parser's limits, bodies that are not JSON, and mutations of a valid body one field at a time.

Bodies are encoded with the standard library's `json`, which writes any integer and any depth
(orjson, which the gateway uses, refuses both): what arrives is what a hostile client could send.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

EDGE_INTS = [
    -1,
    0,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**30,
    -(10**30),
]
edge_ints = st.sampled_from(EDGE_INTS)
odd_floats = st.sampled_from([0.5, -0.0, 1e308, -1e308, 5e-324, 1e-7, 2.0**63, 1e19])
odd_strings = st.sampled_from(
    ["", " ", "\x00", "a" * 300, "💥", "\u202e", "null", "true", "0", "-1", "1e400", "9999-12-31", "../..", "%00"]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    edge_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    odd_floats,
    st.text(max_size=20),
    odd_strings,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@dataclass(frozen=True)
class Nested:
    """Arrays or objects `depth` levels deep around a leaf; `encode` writes it as text, since no
    encoder (the standard library's stops near Python's recursion limit) writes it from objects."""

    depth: int
    as_object: bool
    leaf: Any

    def text(self) -> str:
        opening, closing = ('{"a":', "}") if self.as_object else ("[", "]")
        return opening * self.depth + json.dumps(self.leaf) + closing * self.depth


# Around the parsers' limits: orjson reads 1024 levels and writes 255.
deeply_nested = st.builds(
    Nested,
    depth=st.sampled_from([64, 253, 254, 255, 256, 300, 1022, 1023, 1024, 1025]) | st.integers(1, 1100),
    as_object=st.booleans(),
    leaf=st.one_of(st.none(), st.integers(), st.text(max_size=5)),
)
hostile_values = st.one_of(json_values, scalars, deeply_nested)


def encode(value: Any) -> bytes:
    """JSON as a client may write it: any integer, any depth (`Nested`)."""
    fragments: dict[str, str] = {}

    def placeholders(item: Any) -> Any:
        if isinstance(item, Nested):
            marker = f"@@nested-{len(fragments)}@@"
            fragments[json.dumps(marker)] = item.text()
            return marker
        if isinstance(item, dict):
            return {key: placeholders(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [placeholders(inner) for inner in item]
        return item

    text = json.dumps(placeholders(value), ensure_ascii=False)
    for marker, fragment in fragments.items():
        text = text.replace(marker, fragment, 1)
    return text.encode("utf-8", "surrogatepass")


def paths(value: Any, prefix: tuple = (), max_depth: int = 8) -> list[tuple]:
    """The places in a JSON document (each object key and array index) down to `max_depth`."""
    found = [prefix] if prefix else []
    if len(prefix) >= max_depth:
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def _replace(document: Any, path: tuple, how: str, new: Any) -> Any:
    head, *rest = path
    if isinstance(document, dict):
        copy: Any = dict(document)
    else:
        copy = list(document)
    if rest:
        copy[head] = _replace(copy[head], tuple(rest), how, new)
    elif how == "delete":
        del copy[head]
    elif how == "wrap":
        copy[head] = [copy[head]]
    else:
        copy[head] = new
    return copy


def _at(document: Any, path: tuple) -> Any:
    for step in path:
        document = document[step]
    return document


@st.composite
def mutated(draw, template: dict, *, max_changes: int = 3) -> dict:
    """A valid body with one to `max_changes` fields replaced by a hostile value, deleted, wrapped
    in an array, or joined by an unknown field."""
    body: Any = template
    for _ in range(draw(st.integers(1, max_changes))):
        how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "wrap", "extra"]))
        if how == "extra":
            objects = [p for p in [(), *paths(body)] if isinstance(_at(body, p), dict)]
            path = (*draw(st.sampled_from(objects)), draw(st.text(max_size=10)))
            how = "replace"
        else:
            where = paths(body)
            if not where:
                break
            path = draw(st.sampled_from(where))
        body = _replace(body, path, how, draw(hostile_values) if how == "replace" else None)
    return body


# Bodies that are not a JSON object at all.
raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda s: s.encode("utf-8", "surrogatepass")),
    json_values.map(encode),
    st.sampled_from(
        [
            b"",
            b"{",
            b"{}",
            b"[]",
            b"null",
            b'{"model": "x",}',
            b"\xef\xbb\xbf{}",
            b'{"a": NaN}',
            b'{"a": 1e400}',
            b'{"a": "\\ud800"}',
            b'{"a": 1, "a": 2}',
            b"\x00" * 16,
        ]
    ),
)

# Header values an HTTP client can send (latin-1, no CR/LF).
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)
query_strings = st.one_of(
    st.just(""),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    st.lists(st.tuples(st.text(max_size=8), st.text(max_size=12)), max_size=4).map(
        lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)
    ),
)
