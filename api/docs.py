"""The management API's reference: a server-rendered page made from the OpenAPI schema, and the schema.

Both are for signed-in users (the dashboard session, or a personal access token for the schema)
unless settings.API_DOCS_PUBLIC. The page is plain HTML — no script, nothing from elsewhere — and
compressed: about 20 KB on the wire where Swagger UI was 2 MB, and readable with a screen reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_safe
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated

METHODS = ("get", "post", "put", "patch", "delete")
# Sections in the order an admin meets them; anything new goes after, alphabetically.
GROUP_ORDER = (
    "orgs",
    "keys",
    "deployments",
    "members",
    "invitations",
    "usage",
    "requests",
    "statements",
    "settings",
    "alerts",
)
GROUP_TITLES = {"orgs": "Organisations", "keys": "API keys", "requests": "Request log"}
REF = "#/components/schemas/"


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    ref: str  # the component schema it refers to, or ""
    required: bool
    notes: str  # read-only, nullable, bounds, choices
    description: SafeString


@dataclass(frozen=True)
class Response:
    status: str
    description: str
    type: str
    ref: str


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    path: str
    description: SafeString
    parameters: list[Field]
    body_type: str
    body_ref: str
    body_fields: list[Field]
    responses: list[Response]


@dataclass
class Group:
    slug: str
    title: str
    operations: list[Operation] = field(default_factory=list)


@dataclass(frozen=True)
class Schema:
    name: str
    description: SafeString
    fields: list[Field]


@dataclass(frozen=True)
class Reference:
    title: str
    description: SafeString
    groups: list[Group]
    schemas: list[Schema]


def prose(text: str) -> SafeString:
    """Schema text as HTML: paragraphs at blank lines, `code` in backticks; everything else escaped."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text or "") if p.strip()]
    html = []
    for paragraph in paragraphs:
        parts = escape(" ".join(paragraph.split())).split("`")
        # Odd parts were inside backticks (an unpaired one leaves the rest as text).
        if len(parts) % 2 == 0:
            parts[-2:] = [parts[-2] + "`" + parts[-1]]
        inline = "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))
        html.append(f"<p>{inline}</p>")
    return mark_safe("".join(html))  # escaped above, part by part


def type_of(schema: dict[str, Any]) -> tuple[str, str]:
    """A schema's type in words, and the component schema it names (for a link), if any."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF)
        return name, name
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return type_of(schema["allOf"][0])
    if schema.get("type") == "array":
        inner, ref = type_of(schema.get("items", {}))
        return f"list of {inner}", ref
    kind = schema.get("type", "any")
    if "format" in schema:
        kind = f"{kind} ({schema['format']})"
    return kind, ""


def notes_of(schema: dict[str, Any]) -> str:
    notes = []
    if schema.get("readOnly"):
        notes.append("read-only")
    if schema.get("writeOnly"):
        notes.append("write-only")
    if schema.get("nullable"):
        notes.append("may be null")
    if "enum" in schema:
        notes.append("one of " + ", ".join(str(v) for v in schema["enum"] if v not in ("", None)))
    if "minimum" in schema and "maximum" in schema:
        notes.append(f"{schema['minimum']:,} to {schema['maximum']:,}")
    elif "minimum" in schema:
        notes.append(f"at least {schema['minimum']:,}")
    elif "maximum" in schema:
        notes.append(f"at most {schema['maximum']:,}")
    if "maxLength" in schema:
        notes.append(f"up to {schema['maxLength']:,} characters")
    if "default" in schema:
        notes.append(f"default {schema['default']}")
    return "; ".join(notes)


def fields_of(schema: dict[str, Any], components: dict[str, Any]) -> list[Field]:
    if "$ref" in schema:
        schema = components.get(schema["$ref"].removeprefix(REF), {})
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        kind, ref = type_of(prop)
        description = prose(prop.get("description", ""))
        out.append(Field(name, kind, ref, name in required, notes_of(prop), description))
    return out


def operation_of(method: str, path: str, spec: dict[str, Any], components: dict[str, Any]) -> Operation:
    parameters = [
        Field(
            p["name"],
            type_of(p.get("schema", {}))[0],
            "",
            bool(p.get("required")),
            f"in the {p['in']}" + (f"; {notes}" if (notes := notes_of(p.get("schema", {}))) else ""),
            prose(p.get("description", "")),
        )
        for p in spec.get("parameters", [])
    ]
    body = spec.get("requestBody", {}).get("content", {})
    body_schema = body.get("application/json", next(iter(body.values()), {})).get("schema", {})
    body_type, body_ref = type_of(body_schema) if body_schema else ("", "")
    responses = []
    for status, answer in spec.get("responses", {}).items():
        content = answer.get("content", {})
        schema = next(iter(content.values()), {}).get("schema", {}) if content else {}
        kind, ref = type_of(schema) if schema else ("no body", "")
        responses.append(Response(status, answer.get("description", ""), kind, ref))
    return Operation(
        id=spec.get("operationId", f"{method}-{path}"),
        method=method.upper(),
        path=path,
        description=prose(spec.get("description", "") or spec.get("summary", "")),
        parameters=parameters,
        body_type=body_type,
        body_ref=body_ref,
        body_fields=fields_of(body_schema, components) if body_ref else [],
        responses=responses,
    )


def group_of(path: str) -> str:
    """The resource a path is about: /api/orgs/{org}/keys/… → keys; /api/orgs/ → orgs."""
    parts = [p for p in path.split("/") if p and p != "api"]
    return parts[2] if len(parts) > 2 and parts[0] == "orgs" else parts[0] if parts else "other"


def reference_of(schema: dict[str, Any]) -> Reference:
    components = schema.get("components", {}).get("schemas", {})
    groups: dict[str, Group] = {}
    for path, methods in schema.get("paths", {}).items():
        slug = group_of(path)
        group = groups.setdefault(slug, Group(slug, GROUP_TITLES.get(slug, slug.replace("-", " ").capitalize())))
        for method in METHODS:
            if method in methods:
                group.operations.append(operation_of(method, path, methods[method], components))
    order = {slug: i for i, slug in enumerate(GROUP_ORDER)}
    ordered = sorted(groups.values(), key=lambda g: (order.get(g.slug, len(order)), g.slug))
    schemas = [
        Schema(name, prose(spec.get("description", "")), fields_of(spec, components))
        for name, spec in sorted(components.items())
    ]
    info = schema.get("info", {})
    return Reference(info.get("title", "API"), prose(info.get("description", "")), ordered, schemas)


@cache
def reference() -> Reference:
    """Built once per process: the schema only changes with the code."""
    return reference_of(SchemaGenerator().get_schema(request=None, public=True))


def docs_are_public() -> bool:
    return bool(settings.API_DOCS_PUBLIC)


@require_safe
@gzip_page
def api_docs(request: HttpRequest) -> HttpResponse:
    if not docs_are_public() and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    return render(request, "api/docs.html", {"reference": reference()})


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema, for API clients signed in with a token or a session (or anyone, with
    settings.API_DOCS_PUBLIC). Compressed: it is about 190 KB of JSON."""

    def get_permissions(self) -> list[BasePermission]:
        return [AllowAny()] if docs_are_public() else [IsAuthenticated()]


schema_view = gzip_page(SchemaView.as_view())
