"""The server process tunes its garbage collector once the app is loaded (tokios_site/asgi.py):
everything loaded so far is frozen out of the collector's sight, and the young generation is
collected far less often than Python's default, at the threshold docs/benchmarks.md gives."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: importing the app changes the collector for the whole process.
PROBE = """
import gc, json
before = gc.get_threshold()
import tokios_site.asgi as asgi
tracked = {id(o) for o in gc.get_objects()}  # the collector's generations; frozen objects are not in them
loaded = [asgi.GatewayHandler, asgi.ConnectorConsumer, asgi.application, asgi.gateway_app, asgi.django_app]
print(json.dumps({
    "before": before,
    "after": gc.get_threshold(),
    "frozen": gc.get_freeze_count(),
    "loaded_and_tracked": [type(o).__name__ for o in loaded if id(o) in tracked],
}))
"""


def probe(tmp_path: Path) -> dict:
    env = {**os.environ, "TOKIOS_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "tokios_site.settings"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def documented_threshold() -> int:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    found = re.search(r"young-generation threshold of\s+([\d,]+)", text)
    assert found, "docs/benchmarks.md no longer states the young-generation threshold"
    return int(found.group(1).replace(",", ""))


def test_loading_the_asgi_app_freezes_what_it_loaded_and_raises_the_young_generation_threshold(tmp_path):
    seen = probe(tmp_path)

    assert seen["before"] == [700, 10, 10]  # Python's default, before the app is loaded
    assert seen["after"][0] == documented_threshold() == 10_000
    assert seen["after"][1:] == [10, 10]
    # What the app loaded is out of the collector's full passes: Django, the apps, the handlers.
    assert seen["frozen"] > 50_000
    assert seen["loaded_and_tracked"] == []
