"""The connector command line a user copies next to their model server."""

from __future__ import annotations

from django.http import HttpRequest

DEFAULT_UPSTREAM = "http://127.0.0.1:8080/v1"


def server_url(request: HttpRequest) -> str:
    """This server's origin as the browser (or API client) reached it."""
    return request.build_absolute_uri("/").rstrip("/")


def connector_command(server: str, token: str = "<token>") -> str:
    # The token goes in the environment, not in an argument: `ps` shows every process's command
    # line to every user of the machine, but its environment only to its owner (and root).
    return f"TOKIOS_CONNECTOR_TOKEN={token} python -m tokios_connector --server {server} --upstream {DEFAULT_UPSTREAM}"
