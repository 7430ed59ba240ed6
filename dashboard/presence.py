"""Live connector state for templates: presence entries with datetimes instead of epoch floats, and
the label of the token each connector presented."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from alerts.connector_history import token_labels
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
    token_id: int = 0
    token_label: str = ""  # the token's name (else its prefix); "" if it is gone

    @classmethod
    def from_info(cls, info: ConnectorInfo, token_label: str = "") -> LiveConnector:
        return cls(
            connector_id=info.connector_id,
            version=info.version,
            remote=info.remote,
            connected_since=datetime.fromtimestamp(info.connected_since, UTC),
            last_heartbeat=datetime.fromtimestamp(info.last_heartbeat, UTC),
            inflight=info.inflight,
            max_concurrency=info.max_concurrency,
            draining=info.draining,
            token_id=info.token_id,
            token_label=token_label,
        )


def live_infos(deployment_id: int) -> list[ConnectorInfo]:
    return presence.live_connectors_sync(deployment_id)


def labelled(deployment_id: int, infos: Sequence[ConnectorInfo]) -> list[LiveConnector]:
    """The connectors with their tokens' labels (one query, only the deployment's own tokens)."""
    labels = token_labels(deployment_id, (info.token_id for info in infos))
    return [LiveConnector.from_info(info, labels.get(info.token_id, "")) for info in infos]


def connectors_for(deployment_id: int) -> list[LiveConnector]:
    return labelled(deployment_id, live_infos(deployment_id))


def online_ids(deployments) -> set[int]:
    return presence.online_deployment_ids([d.id for d in deployments])
