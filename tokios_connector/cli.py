"""Command line: ``TOKIOS_CONNECTOR_TOKEN=... python -m tokios_connector --server ... --upstream ...``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TextIO, TypeVar

from . import __version__, tracing
from . import metrics as connector_metrics
from .check import run_check
from .config import Config, public_url, upstream_base, websocket_url
from .connector import Connector
from .discover import AUTO, CANDIDATES, Candidate, find_upstream, not_found_message
from .protocol import MAX_CONCURRENCY

T = TypeVar("T")

DESCRIPTION = """\
Connect a local OpenAI-compatible model server (llama.cpp, Ollama, vLLM, ...) to a Tokios
deployment. The connector dials out over one WebSocket, so the model needs no inbound port.
Every option can also be given as an environment variable (shown in brackets). Give the token
in TOKIOS_CONNECTOR_TOKEN or in a file (--token-file), not with --token: other local users can
read a command line in the process list.
"""

EXIT_NO_UPSTREAM = 3  # --upstream auto found no model server

# A connector token is ~60 characters; a file much longer than that is not a token file.
MAX_TOKEN_FILE_BYTES = 4096


def _concurrency(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_CONCURRENCY:  # the server refuses a hello above it
        raise ValueError
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise ValueError
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokios_connector", description=DESCRIPTION)
    p.add_argument("--server", help="Tokios base URL, e.g. https://tokios.example [TOKIOS_SERVER]")
    token = p.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the connector token from FILE, readable by you only [TOKIOS_CONNECTOR_TOKEN_FILE]",
    )
    token.add_argument(
        "--token",
        help="the connector token; visible to other local users in the process list, so prefer "
        "TOKIOS_CONNECTOR_TOKEN or --token-file [TOKIOS_CONNECTOR_TOKEN]",
    )
    p.add_argument(
        "--upstream",
        help="model server base URL, e.g. http://127.0.0.1:8080/v1, or `auto` to look for llama.cpp, Ollama, "
        "vLLM and LM Studio on their default ports [TOKIOS_UPSTREAM]",
    )
    p.add_argument("--model", help="rewrite the request's `model` to this upstream model name [TOKIOS_MODEL]")
    p.add_argument(
        "--max-concurrency",
        metavar="N",
        help="requests sent to the model server at once (default 64); the server queues the rest. "
        "llama.cpp's own slot count is used when it is lower [TOKIOS_MAX_CONCURRENCY]",
    )
    p.add_argument(
        "--upstream-key",
        metavar="KEY",
        help="API key the upstream expects, sent as a Bearer token [TOKIOS_UPSTREAM_KEY]",
    )
    p.add_argument(
        "--grace",
        metavar="SECONDS",
        help="on SIGTERM, wait this long for in-flight requests (default 30) [TOKIOS_GRACE]",
    )
    p.add_argument(
        "--connect-timeout",
        metavar="SECONDS",
        help="upstream and server connect timeout (default 10) [TOKIOS_CONNECT_TIMEOUT]",
    )
    p.add_argument(
        "--read-timeout",
        metavar="SECONDS",
        help="upstream read timeout between bytes (default 600) [TOKIOS_READ_TIMEOUT]",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info [TOKIOS_LOG_LEVEL]")
    p.add_argument("--log-prompts", action="store_true", help="log request bodies (prompts); off by default")
    p.add_argument(
        "--metrics-port",
        metavar="PORT",
        help="serve Prometheus metrics on this port (needs the `metrics` extra) [TOKIOS_CONNECTOR_METRICS_PORT]",
    )
    p.add_argument(
        "--metrics-host",
        metavar="ADDRESS",
        help="address the metrics port listens on (default 127.0.0.1) [TOKIOS_CONNECTOR_METRICS_HOST]",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="say what the model server speaks and whether the server accepts the token, then exit "
        "(0: ready to serve) without serving anything",
    )
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="do not ask the model server which API surfaces and models it has; the server then "
        "translates every surface to chat completions",
    )
    p.add_argument("--version", action="version", version=f"tokios_connector {__version__}")
    return p


def read_token_file(path: str) -> tuple[str, str | None]:
    """The token a file holds (its first line, stripped), and a warning if others may read it.

    Raises ValueError with a message that never shows the file's content."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_TOKEN_FILE_BYTES + 1)
            mode = os.fstat(file.fileno()).st_mode
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror})") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(f"is over {MAX_TOKEN_FILE_BYTES} bytes: it holds no connector token")
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    if not lines:
        raise ValueError("is empty")
    warning = None
    if os.name == "posix" and mode & 0o077:
        warning = f"token file {path} can be read by other users (mode {mode & 0o777:o}): chmod 600 it"
    return lines[0].strip(), warning


@dataclass(frozen=True)
class Invocation:
    config: Config  # its `upstream` is `auto` when the model server is to be looked for (resolve_upstream)
    log_level: str
    warnings: list[str]  # to log once logging is set up
    check: bool  # --check: report and exit, serve nothing


def parse_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> tuple[Config, str, list[str]]:
    """The settings, log level and warnings of a command line (see `parse_invocation`)."""
    invocation = parse_invocation(argv, env)
    return invocation.config, invocation.log_level, invocation.warnings


def parse_invocation(argv: Sequence[str] | None, env: Mapping[str, str]) -> Invocation:
    """Command line first, then environment. Errors exit with status 2 via argparse."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings: list[str] = []

    def pick(name: str, env_name: str, convert: Callable[[str], T], default: T, what: str) -> T:
        raw = getattr(args, name)
        source = f"--{name.replace('_', '-')}"
        if raw is None:
            raw = env.get(env_name) or None
            source = env_name
        if raw is None:
            return default
        try:
            return convert(raw)
        except ValueError:
            parser.error(f"{source} must be {what} (got {raw!r})")
            raise  # unreachable: parser.error exits

    def required(name: str, env_name: str) -> str:
        value = getattr(args, name) or env.get(env_name)
        if not value:
            parser.error(f"--{name} is required (or set {env_name})")
        return value

    def token_from_file(path: str, source: str) -> str:
        try:
            token, warning = read_token_file(path)
        except ValueError as exc:
            parser.error(f"{source} {path} {exc}")
            raise  # unreachable: parser.error exits
        if warning:
            warnings.append(warning)
        return token

    server = required("server", "TOKIOS_SERVER")
    if args.token:
        token = args.token
        warnings.append(
            "--token puts the connector token in the process list, where other local users can read it: "
            "set TOKIOS_CONNECTOR_TOKEN or use --token-file instead"
        )
    elif args.token_file:
        token = token_from_file(args.token_file, "--token-file")
    elif env.get("TOKIOS_CONNECTOR_TOKEN"):
        token = env["TOKIOS_CONNECTOR_TOKEN"]
    elif env.get("TOKIOS_CONNECTOR_TOKEN_FILE"):
        token = token_from_file(env["TOKIOS_CONNECTOR_TOKEN_FILE"], "TOKIOS_CONNECTOR_TOKEN_FILE")
    else:
        parser.error("a connector token is required: set TOKIOS_CONNECTOR_TOKEN or pass --token-file FILE")
    upstream = required("upstream", "TOKIOS_UPSTREAM")
    try:
        server_url = websocket_url(server)
        # `auto` stays as it is: main() looks for the model server before anything else.
        base = AUTO if upstream.strip().lower() == AUTO else upstream_base(upstream)
    except ValueError as exc:
        parser.error(str(exc))
    config = Config(
        server_url=server_url,
        token=token.strip(),
        upstream=base,
        model=args.model or env.get("TOKIOS_MODEL") or None,
        max_concurrency=pick(
            "max_concurrency",
            "TOKIOS_MAX_CONCURRENCY",
            _concurrency,
            64,
            f"a positive integer up to {MAX_CONCURRENCY}",
        ),
        upstream_key=args.upstream_key or env.get("TOKIOS_UPSTREAM_KEY") or None,
        grace=pick("grace", "TOKIOS_GRACE", _non_negative_float, 30.0, "a number of seconds >= 0"),
        connect_timeout=pick(
            "connect_timeout", "TOKIOS_CONNECT_TIMEOUT", _positive_float, 10.0, "a number of seconds > 0"
        ),
        read_timeout=pick("read_timeout", "TOKIOS_READ_TIMEOUT", _positive_float, 600.0, "a number of seconds > 0"),
        log_prompts=args.log_prompts,
        metrics_port=pick("metrics_port", "TOKIOS_CONNECTOR_METRICS_PORT", _port, None, "a port number, 1-65535"),
        metrics_host=args.metrics_host or env.get("TOKIOS_CONNECTOR_METRICS_HOST") or "127.0.0.1",
        probe=not args.no_probe,
    )
    if config.metrics_port is not None and not connector_metrics.available():
        parser.error(f"--metrics-port needs the prometheus-client package: {connector_metrics.INSTALL_HINT}")
    level = args.log_level or env.get("TOKIOS_LOG_LEVEL", "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        parser.error(f"TOKIOS_LOG_LEVEL must be one of debug, info, warning, error (got {level!r})")
    return Invocation(config, level, warnings, args.check)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets logs handshake headers (our Bearer token) at debug level, and httpx logs one line
    # per upstream request at info: keep both quiet whatever --log-level says.
    for noisy in ("websockets", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main_coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed: its faster transports matter at thousands of frames a second."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_coroutine)
    return uvloop.run(main_coroutine)


async def resolve_upstream(
    config: Config, candidates: tuple[Candidate, ...] = CANDIDATES, out: TextIO = sys.stderr
) -> Config | None:
    """`config` with `--upstream auto` replaced by the model server found; None if there is none."""
    if config.upstream != AUTO:
        return config
    found = await find_upstream(candidates, upstream_key=config.upstream_key)
    if found is None:
        print(f"tokios_connector: {not_found_message(candidates)}", file=out, flush=True)
        return None
    print(f"upstream: {found.name} at {found.base}", file=out, flush=True)
    return replace(config, upstream=found.base)


def main(argv: Sequence[str] | None = None) -> int:
    invocation = parse_invocation(argv, os.environ)
    configure_logging(invocation.log_level)
    logger = logging.getLogger("tokios_connector")
    for warning in invocation.warnings:
        logger.warning("%s", warning)
    config = run(resolve_upstream(invocation.config)) if invocation.config.upstream == AUTO else invocation.config
    if config is None:
        return EXIT_NO_UPSTREAM
    if invocation.check:
        return run(run_check(config))
    logger.info(
        "tokios_connector %s: server %s, upstream %s%s, max concurrency %d",
        __version__,
        public_url(config.server_url),
        public_url(config.upstream),
        f", model {config.model}" if config.model else "",
        config.max_concurrency,
    )
    metrics: connector_metrics.NoMetrics = connector_metrics.NO_METRICS
    if config.metrics_port is not None:
        try:
            metrics = connector_metrics.serve(config.metrics_host, config.metrics_port)
        except OSError as exc:
            where = f"{config.metrics_host}:{config.metrics_port}"
            print(f"tokios_connector: cannot serve metrics on {where}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        logger.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)
    try:
        traces, problem = tracing.setup(os.environ)
    except ValueError as exc:
        print(f"tokios_connector: {exc}", file=sys.stderr)
        return 2
    if problem:
        logger.warning("%s", problem)
    try:
        return run(Connector(config, traces, metrics=metrics).run())
    finally:
        if traces is not None:
            traces.shutdown()  # what is still batched goes out before the process ends
