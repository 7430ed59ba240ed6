"""Live connector state for templates: presence entries with datetimes instead of epoch floats."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from proxy.tunnel import presence
from proxy.tunnel.presence import ConnectorInfo


@dataclass(frozen=True)
class LiveConnector:
    connector_id: str
    version: str
    remote: str
    connected_since: datetime
    last_heartbeat: datetime
    inflight: int
    max_concurrency: int
    draining: bool

    @classmethod
    def from_info(cls, info: ConnectorInfo) -> LiveConnector:
        return cls(
            connector_id=info.connector_id,
            version=info.version,
            remote=info.remote,
            connected_since=datetime.fromtimestamp(info.connected_since, UTC),
            last_heartbeat=datetime.fromtimestamp(info.last_heartbeat, UTC),
            inflight=info.inflight,
            max_concurrency=info.max_concurrency,
            draining=info.draining,
        )


def connectors_for(deployment_id: int) -> list[LiveConnector]:
    return [LiveConnector.from_info(info) for info in presence.live_connectors_sync(deployment_id)]


def online_ids(deployments) -> set[int]:
    return presence.online_deployment_ids([d.id for d in deployments])
