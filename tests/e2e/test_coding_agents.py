"""The real Codex CLI and Claude Code, as installed from npm, through Tokios with their default
settings (telemetry, update checks and other non-essential traffic off).

Each agent runs non-interactively against a real uvicorn server and a real connector whose upstream
is a scripted Chat Completions model (tests/e2e/scripted_upstream.py). Checked for each agent: a
plain prompt; a round trip through one of the agent's own tools (the model asks to read a file, the
agent runs its tool, the file's content reaches the model in the next request and the model's final
text is what the agent prints); a revoked key, reported after one request; and a deployment whose
connector is not connected, reported clearly after a few attempts. For Codex, also a call of one of
its namespaced tools, which Tokios flattens for the model and maps back.

One setting each departs from the defaults, because the defaults retry far longer than a person
waits for an answer that will not change (measured with these versions):
- Codex retries a whole turn on any status but 400, 404 and 429 (`stream_max_retries`, 5), and each
  turn retries a 5xx at the HTTP level (`request_max_retries`, 4): a revoked key cost 6 requests over
  ~8 s and an offline deployment 30 over ~30 s. With `stream_max_retries = 0` in the provider's table:
  1 and 5 (its quick HTTP-level retries still cover a connector that is reconnecting).
- Claude Code retries a 5xx 10 times with a backoff reaching ~35 s: 11 requests over ~3 minutes for
  an offline deployment. `CLAUDE_CODE_MAX_RETRIES=3`: 4 requests over ~5 s. A revoked key is one
  request either way: Claude Code honours the `x-should-retry: false` that Tokios puts on every 4xx
  that will not change on retry (without that header it retried a 401 ten times too).

Requests that reach Tokios are counted from the server's access log: one JSON line per /v1 request
(proxy/access_log.py), read from the server's output after the agent ran.

The agents are pinned in tests/e2e/agents/package-lock.json; `.ci/run` installs them with
`npm ci --prefix tests/e2e/agents` (Claude Code's install script copies its native binary out of the
platform package npm installed beside it). Without them these tests skip locally, naming what is
missing; in CI (or with TOKIOS_REQUIRE_AGENTS=1) they fail instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.e2e import surface_fixtures
from tests.e2e.scripted_upstream import ScriptedUpstream, chunk, sse

settle_usage_writes = surface_fixtures.settle_usage_writes  # autouse

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AGENTS = Path(__file__).resolve().parent / "agents"
INSTALL = "npm ci --prefix tests/e2e/agents"
CODEX_VERSION = "0.171.0"
CLAUDE_VERSION = "2.1.332"
RUN_TIMEOUT = 60.0  # one agent run; they take a few seconds
OFFLINE_TIMEOUT = 90.0
MAX_OFFLINE_ATTEMPTS = 11
OFFLINE = "Connector offline — the tunnel is not active"
CHAT = "/v1/chat/completions"


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("TOKIOS_REQUIRE_AGENTS") == "1"


def agent_binary(name: str, version: str) -> Path:
    """The installed agent's command; a skip (a failure in CI) without it."""
    path = AGENTS / "node_modules" / ".bin" / name
    problem = _install_problem(path, version)
    if problem:
        if _required():
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    return path


@cache
def _install_problem(path: Path, version: str) -> str:
    """Why the agent at `path` cannot be used, or "" when it runs and is the pinned version."""
    if not path.exists():
        return f"needs the {path.name} coding agent (`{INSTALL}`)"
    try:
        done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path.name} does not run ({exc}); reinstall with `{INSTALL}`"
    if version not in done.stdout:
        return f"{path.name} --version said {done.stdout.strip()!r} {done.stderr.strip()!r}, not {version}: `{INSTALL}`"
    return ""


# ------------------------------------------------------------------------------------ scripted model


def _text_answer(body: dict, text: str) -> tuple[int, str, bytes]:
    if body.get("stream"):
        return (
            200,
            "text/event-stream",
            sse(chunk({"role": "assistant", "content": text}), chunk({}, "stop"), "data: [DONE]"),
        )
    message = {"role": "assistant", "content": text}
    return 200, "application/json", _completion(message, "stop")


def _tool_call_answer(body: dict, name: str, arguments: dict) -> tuple[int, str, bytes]:
    call = {"id": "call_agent_1", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    if body.get("stream"):
        delta = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}]}
        return 200, "text/event-stream", sse(chunk(delta), chunk({}, "tool_calls"), "data: [DONE]")
    return (
        200,
        "application/json",
        _completion({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"),
    )


def _completion(message: dict, finish: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }
    ).encode()


def says(text: str):
    """A model that answers every request with `text`."""
    return lambda body: _text_answer(body, text)


def uses_tool(name: str, arguments: dict, final: str):
    """A model that asks for one call of the agent's tool `name`, then, once a tool result is in the
    conversation, answers `final`."""

    def route(body: dict) -> tuple[int, str, bytes]:
        if any(m.get("role") == "tool" for m in body.get("messages", [])):
            return _text_answer(body, final)
        return _tool_call_answer(body, name, arguments)

    return route


def tool_results(upstream: ScriptedUpstream) -> list[str]:
    """The content of every tool message the model was sent, in order."""
    found = []
    for body in upstream.bodies(CHAT):
        for message in body.get("messages", []):
            if message.get("role") == "tool":
                content = message.get("content")
                found.append(content if isinstance(content, str) else json.dumps(content))
    return found


# -------------------------------------------------------------------------------------- agent runs


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    requests: list[dict]  # the access-log lines of the /v1 requests made during the run

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.1f}s\nstdout:\n{self.stdout[-3000:]}\n"
            f"stderr:\n{self.stderr[-3000:]}\nrequests: {[(r['path'], r['status']) for r in self.requests]}"
        )


def access_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{") and '"path":"/v1/' in line:
            lines.append(json.loads(line))
    return lines


def run_agent(server, args: list[str], env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT) -> Run:
    before = len(server.proc.output())
    started = time.monotonic()
    done = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    seconds = time.monotonic() - started
    time.sleep(0.3)  # the access line is written as the request's scope closes, just after the response
    return Run(done.returncode, done.stdout, done.stderr, seconds, access_lines(server.proc.output()[before:]))


def base_agent_env(home: Path) -> dict[str, str]:
    """Only what a shell gives a user: no variable of this test process (or of CI) leaks in."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb"}


def codex_config(server, model: str) -> str:
    """The config.toml the README shows, with this test server's address."""
    return f"""model = "{model}"
model_provider = "tokios"
check_for_update_on_startup = false

[model_providers.tokios]
name = "Tokios"
base_url = "{server.url}/v1"
wire_api = "responses"
env_key = "TOKIOS_API_KEY"
stream_max_retries = 0

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
"""


def codex(server, tenant, tmp_path: Path, prompt: str, *, timeout: float = RUN_TIMEOUT) -> Run:
    binary = agent_binary("codex", CODEX_VERSION)
    home = tmp_path / "codex-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(codex_config(server, tenant.model))
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {**base_agent_env(tmp_path), "CODEX_HOME": str(home), "TOKIOS_API_KEY": tenant.key}
    args = [str(binary), "exec", "--strict-config", "--skip-git-repo-check", "--ephemeral", "--color", "never"]
    args += ["--sandbox", "read-only", "--cd", str(work), prompt]
    return run_agent(server, args, env, work, timeout)


CLAUDE_ENV = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_MAX_RETRIES": "3",
}


def claude(server, tenant, tmp_path: Path, prompt: str, *, timeout: float = RUN_TIMEOUT) -> Run:
    binary = agent_binary("claude", CLAUDE_VERSION)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {
        **base_agent_env(tmp_path),
        **CLAUDE_ENV,
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": tenant.key,
    }
    args = [str(binary), "-p", prompt, "--model", tenant.model, "--allowedTools", "Read", "--output-format", "text"]
    return run_agent(server, args, env, work, timeout)


def note_file(tmp_path: Path) -> tuple[Path, str]:
    """A file in the agent's working directory holding a word only the file knows."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    secret = f"marmalade-{uuid.uuid4().hex[:10]}"
    path = work / "note.txt"
    path.write_text(f"The password is {secret}.\n")
    return path, secret


# ------------------------------------------------------------------------------------------- Codex


def test_codex_answers_a_plain_prompt(server, tenant, start_connector, tmp_path):
    with ScriptedUpstream({CHAT: says("Pong from the model behind Tokios.")}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        run = codex(server, tenant, tmp_path, "Say pong.")

    assert run.returncode == 0, run.describe()
    assert "Pong from the model behind Tokios." in run.stdout, run.describe()
    assert [(r["path"], r["status"]) for r in run.requests] == [("/v1/responses", 200)], run.describe()
    [sent] = upstream.bodies(CHAT)
    assert sent["model"] == tenant.model
    assert sent["messages"][-1]["role"] == "user" and "Say pong." in json.dumps(sent["messages"][-1])


def test_codex_runs_its_shell_tool_and_the_result_reaches_the_model(server, tenant, start_connector, tmp_path):
    note, secret = note_file(tmp_path)
    model = uses_tool("exec_command", {"cmd": f"cat {note.name}"}, final="The note holds the password.")
    with ScriptedUpstream({CHAT: model}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        run = codex(server, tenant, tmp_path, "What does note.txt say?")

    assert run.returncode == 0, run.describe()
    assert "The note holds the password." in run.stdout, run.describe()
    results = tool_results(upstream)
    assert len(results) == 1 and secret in results[0], (results, run.describe())
    second = upstream.bodies(CHAT)[-1]["messages"]
    [call] = [m for m in second if m.get("tool_calls")]
    assert call["tool_calls"][0]["function"]["name"] == "exec_command"
    assert call["tool_calls"][0]["id"] == next(m for m in second if m.get("role") == "tool")["tool_call_id"]
    assert [(r["path"], r["status"]) for r in run.requests] == [("/v1/responses", 200)] * 2, run.describe()


def test_codex_reports_a_revoked_key_after_one_request(server, tenant, start_connector, tmp_path):
    revoke_the_key(tenant)
    with ScriptedUpstream({CHAT: says("never")}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        run = codex(server, tenant, tmp_path, "Say pong.")

    assert run.returncode != 0, run.describe()
    assert "revoked" in run.output, run.describe()
    assert [(r["path"], r["status"]) for r in run.requests] == [("/v1/responses", 401)], run.describe()
    assert upstream.bodies(CHAT) == []


def test_codex_reports_an_offline_deployment_after_a_few_attempts(server, tenant, tmp_path):
    run = codex(server, tenant, tmp_path, "Say pong.", timeout=OFFLINE_TIMEOUT)

    assert run.returncode != 0, run.describe()
    assert OFFLINE in run.output, run.describe()
    statuses = [(r["path"], r["status"]) for r in run.requests]
    assert 1 <= len(statuses) <= MAX_OFFLINE_ATTEMPTS, run.describe()
    assert set(statuses) == {("/v1/responses", 503)}, run.describe()
    print(f"codex offline: {len(statuses)} requests in {run.seconds:.1f}s")


# ------------------------------------------------------------------------------------- Claude Code


def test_claude_code_answers_a_plain_prompt(server, tenant, start_connector, tmp_path):
    with ScriptedUpstream({CHAT: says("Pong from the model behind Tokios.")}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        run = claude(server, tenant, tmp_path, "Say pong.")

    assert run.returncode == 0, run.describe()
    assert run.stdout.strip() == "Pong from the model behind Tokios.", run.describe()
    assert [(r["path"], r["status"]) for r in run.requests] == [("/v1/messages", 200)], run.describe()
    [sent] = upstream.bodies(CHAT)
    assert sent["model"] == tenant.model
    assert "Say pong." in json.dumps(sent["messages"][-1])


def test_claude_code_runs_its_read_tool_and_the_result_reaches_the_model(server, tenant, start_connector, tmp_path):
    note, secret = note_file(tmp_path)
    model = uses_tool("Read", {"file_path": str(note)}, final="The note holds the password.")
    with ScriptedUpstream({CHAT: model}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        run = claude(server, tenant, tmp_path, "What does note.txt say?")

    assert run.returncode == 0, run.describe()
    assert run.stdout.strip() == "The note holds the password.", run.describe()
    results = tool_results(upstream)
    assert len(results) == 1 and secret in results[0], (results, run.describe())
    second = upstream.bodies(CHAT)[-1]["messages"]
    [call] = [m for m in second if m.get("tool_calls")]
    assert call["tool_calls"][0]["function"]["name"] == "Read"
    assert json.loads(call["tool_calls"][0]["function"]["arguments"]) == {"file_path": str(note)}
    assert [(r["path"], r["status"]) for r in run.requests] == [("/v1/messages", 200)] * 2, run.describe()


def test_claude_code_reports_a_revoked_key_after_one_request(server, tenant, start_connector, tmp_path):
    revoke_the_key(tenant)
    with ScriptedUpstream({CHAT: says("never")}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        run = claude(server, tenant, tmp_path, "Say pong.")

    assert run.returncode != 0, run.describe()
    assert "revoked" in run.output, run.describe()
    assert [(r["path"], r["status"]) for r in run.requests] == [("/v1/messages", 401)], run.describe()
    assert upstream.bodies(CHAT) == []


def test_claude_code_reports_an_offline_deployment_after_a_few_attempts(server, tenant, tmp_path):
    run = claude(server, tenant, tmp_path, "Say pong.", timeout=OFFLINE_TIMEOUT)

    assert run.returncode != 0, run.describe()
    assert OFFLINE in run.output, run.describe()
    statuses = [(r["path"], r["status"]) for r in run.requests]
    assert 1 <= len(statuses) <= MAX_OFFLINE_ATTEMPTS, run.describe()
    assert set(statuses) == {("/v1/messages", 503)}, run.describe()
    print(f"claude offline: {len(statuses)} requests in {run.seconds:.1f}s")


def revoke_the_key(tenant) -> None:
    from accounts.actions import revoke_api_key
    from accounts.models import ApiKey

    revoke_api_key(key=ApiKey.objects.get(org=tenant.org))
    time.sleep(1.2)  # a server process caches a key for at most a second


def test_codex_dispatches_a_namespaced_tool_call_tokios_flattened(server, tenant, start_connector, tmp_path):
    """Codex's namespace tools reach the model as `namespace__name`; the model's call comes back to
    Codex as {name, namespace}, which Codex runs as its own tool (an unknown call would be answered
    'unsupported call')."""
    model = uses_tool("multi_agent_v1__wait_agent", {"targets": ["no-such-agent"]}, final="Waited.")
    with ScriptedUpstream({CHAT: model}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        run = codex(server, tenant, tmp_path, "Wait for the agents.")

    assert run.returncode == 0, run.describe()
    assert "Waited." in run.stdout, run.describe()
    # Codex's own wait_agent handler answered (it parses agent ids), not its "unsupported call" reply.
    [result] = tool_results(upstream)
    assert "invalid agent id no-such-agent" in result, result
    second = upstream.bodies(CHAT)[-1]["messages"]
    [call] = [m for m in second if m.get("tool_calls")]
    assert call["tool_calls"][0]["function"]["name"] == "multi_agent_v1__wait_agent"
