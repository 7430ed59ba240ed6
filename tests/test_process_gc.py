"""The server process tunes its garbage collector once the app is loaded (see tokios_site/asgi.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loading_the_asgi_app_freezes_what_it_loaded_and_raises_the_young_generation_threshold(tmp_path):
    probe = "import gc, json, tokios_site.asgi as a; print(json.dumps([gc.get_threshold(), a.GC_THRESHOLD, gc.get_freeze_count()]))"
    env = {**os.environ, "TOKIOS_DATA_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)

    threshold, configured, frozen = json.loads(out.stdout.strip().splitlines()[-1])
    assert threshold == configured and threshold[0] > 700  # Python's default is (700, 10, 10)
    assert frozen > 50_000  # Django and the apps, out of the collector's full passes
