"""axe-core (Deque's accessibility engine, MPL-2.0) for the browser tests: run in the page, its
serious and critical findings returned.

The engine is an npm package pinned with its integrity hash in tools/package-lock.json. `.ci/run`
installs it (`npm ci --prefix dashboard/tests/browser/tools`); a local run installs it on first use
into the same ignored tools/node_modules/. It is evaluated through the DevTools protocol, which the
page's Content-Security-Policy does not apply to: the pages are checked with their real policy on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent / "tools"
AXE_JS = TOOLS / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")

# Every rule axe has for WCAG 2.x A and AA and its best practices (its default set).
RUN = """async () => {
  const results = await axe.run(document, { resultTypes: ["violations"] });
  return results.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => ({ target: n.target.join(" "), summary: n.failureSummary })),
    count: v.nodes.length,
  }));
}"""


def required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("TOKIOS_REQUIRE_BROWSER") == "1"


@cache
def axe_source() -> str:
    if not AXE_JS.exists():
        npm = shutil.which("npm")
        problem = "needs npm to install axe-core (apt-get install npm)" if npm is None else ""
        if npm is not None:
            done = subprocess.run(
                [npm, "ci", "--prefix", str(TOOLS), "--no-audit", "--no-fund", "--ignore-scripts"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0 or not AXE_JS.exists():
                problem = f"`npm ci` for axe-core failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        if problem:
            if required():
                pytest.fail(problem, pytrace=False)
            pytest.skip(problem)
    return AXE_JS.read_text()


def violations(page) -> list[dict]:
    """axe's violations on the page as it is now, every impact."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(axe_source())
    return page.evaluate(RUN)


def blocking(found: list[dict]) -> list[dict]:
    return [v for v in found if v["impact"] in BLOCKING]


def describe(where: str, found: list[dict]) -> list[str]:
    return [
        f"{where}: {v['impact']} {v['id']} ({v['help']}) ×{v['count']}: "
        + "; ".join(f"{n['target']}" for n in v["nodes"])
        for v in found
    ]
