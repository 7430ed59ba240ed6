"""The apps import downward only (docs/architecture.md, "Apps and layers").

Every module of the apps is parsed with `ast`, its imports collected wherever they sit (module
level, `if TYPE_CHECKING:`, inside functions), and each is checked against the layer table below:
an app may import itself, or an app of a lower layer; never a higher one, and never its sibling on
the same layer (the web UI and the management API do not import each other). proxy/ and billing/
must not hide a dependency in a function-local import of another app, and proxy/translate/ imports
no app and no Django at all.

Tests (any `tests` package, conftest.py) and migrations are exempt: tests may drive any layer, and
a migration names the apps whose tables it depends on.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The table of docs/architecture.md: lower numbers are lower layers.
LAYERS = {
    "lib": 0,
    "tokios_connector": 0,
    "accounts": 1,
    "deployments": 2,
    "billing": 3,
    "proxy": 4,
    "alerts": 5,
    "api": 6,
    "dashboard": 6,
    "tokios_site": 7,
}
# Where a function-local import of another app is refused too (a cycle dodged there hides a
# layering problem; fix the layering).
NO_LOCAL_IMPORTS = {"proxy", "billing"}
# Pure translation code: no app, no Django, so its tests run without either.
PURE = "proxy.translate"
DJANGO_PACKAGES = {"django", "channels", "ninja", "rest_framework", "drf_spectacular", "asgiref"}


@dataclass(frozen=True)
class Import:
    module: str  # the absolute name imported from
    line: int
    local: bool  # inside a function


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, source: str, *, is_package: bool = False) -> list[Import]:
    """Every import in `source`, as absolute module names (`from pkg import name` as `pkg`)."""
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, child.lineno, local) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.append(Import(_absolute(child, module, is_package), child.lineno, local))
            visit(child, local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(ast.parse(source), False)
    return found


def app_of(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in LAYERS else None


def offences(module: str, source: str, *, is_package: bool = False) -> list[str]:
    """What `module` (whose text is `source`) imports against the rules, one line per import."""
    source_app = app_of(module)
    if source_app is None:
        return []
    problems: list[str] = []
    for imp in imports_of(module, source, is_package=is_package):
        target_app = app_of(imp.module)
        where = f"{module}:{imp.line} imports {imp.module}"
        if module == PURE or module.startswith(PURE + "."):
            top = imp.module.split(".")[0]
            outside = target_app is not None and not (imp.module == PURE or imp.module.startswith(PURE + "."))
            if outside or top in DJANGO_PACKAGES:
                problems.append(f"{where}: {PURE} imports no app and no Django")
        if target_app is None or target_app == source_app:
            continue
        if LAYERS[target_app] >= LAYERS[source_app]:
            direction = "sideways" if LAYERS[target_app] == LAYERS[source_app] else "upward"
            problems.append(
                f"{where}: {direction}, from {source_app} (layer {LAYERS[source_app]}) "
                f"to {target_app} (layer {LAYERS[target_app]})"
            )
        if imp.local and source_app in NO_LOCAL_IMPORTS:
            problems.append(f"{where}: a function-local import of another app in {source_app}/")
    return problems


def exempt(path: Path) -> bool:
    parts = path.relative_to(ROOT).parts
    return "tests" in parts or "migrations" in parts or path.name == "conftest.py"


def app_modules() -> list[Path]:
    return sorted(
        path for app in LAYERS for path in (ROOT / app).rglob("*.py") if not exempt(path) and ".venv" not in path.parts
    )


# --- the checker on small sources, so that it is known to catch what it should ----------------


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("api.views", "from dashboard.access import owned_or_404", "sideways"),
        ("dashboard.views.keys", "import api.models", "sideways"),
        ("accounts.models", "from deployments.models import Deployment", "upward"),
        ("deployments.actions", "def f():\n    from proxy.tunnel.presence import disconnect_token\n", "upward"),
        ("billing.queries", "def f():\n    from accounts.models import ApiKey\n", "function-local"),
        ("proxy.gateway", "async def f():\n    from billing import limits\n", "function-local"),
        ("proxy.translate.sse", "from django.http import HttpResponse", "no Django"),
        ("proxy.translate.sse", "from proxy.errors import GatewayError", "imports no app"),
        ("proxy.translate.sse", "from ..errors import GatewayError", "imports no app"),
        ("lib.redis", "from tokios_connector import protocol", "sideways"),
        (
            "deployments.signals",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from billing.models import X\n",
            "upward",
        ),
    ],
)
def test_the_checker_flags(module, source, expected):
    problems = offences(module, source)
    assert problems and all(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("dashboard.views.keys", "from accounts.tenancy import org_view\nfrom deployments.actions import grant_model"),
        ("proxy.access", "from accounts.models import ApiKey\nfrom deployments.models import Deployment"),
        ("billing.models", "from . import periods\nfrom .periods import floor_hour"),
        ("proxy.apps", "def ready():\n    from . import access\n"),
        ("proxy.translate.anthropic", "from .errors import TranslationError\nimport json"),
        ("accounts.models", "from django.db import models\nfrom lib.env import env_int"),
        ("tokios_site.urls", "from django.urls import include\nimport dashboard.urls\nimport api.urls"),
    ],
)
def test_the_checker_allows(module, source):
    assert offences(module, source) == []


def test_relative_imports_resolve_against_the_package():
    assert [i.module for i in imports_of("proxy.tunnel.router", "from ..calls import X")][0] == "proxy.calls"
    assert [i.module for i in imports_of("proxy.tunnel", "from . import presence", is_package=True)] == ["proxy.tunnel"]
    assert [i.module for i in imports_of("proxy.translate.sse", "from .. import errors")] == ["proxy"]


# --- the code base ---------------------------------------------------------------------------


def test_every_app_imports_downward_only():
    modules = app_modules()
    assert len(modules) > 50  # the scan found the code
    problems = [
        problem
        for path in modules
        for problem in offences(module_name(path), path.read_text(), is_package=path.name == "__init__.py")
    ]
    assert problems == [], "imports against docs/architecture.md's layers:\n" + "\n".join(problems)
