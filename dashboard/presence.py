"""Live connector state for templates: presence entries with datetimes instead of epoch floats, and
the label of the token each connector presented."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from django.urls import reverse
from django.utils.http import urlencode

from alerts.connector_history import token_labels
from deployments.models import Deployment, suggest_deployment_name
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
    """The ids of those with a live connector: their own, or for a served deployment its server's."""
    online = presence.online_deployment_ids(sorted({d.pool_id for d in deployments}))
    return {d.id for d in deployments if d.pool_id in online}


def announced_models(infos: Sequence[ConnectorInfo]) -> list[str]:
    """The upstream model names the connectors announced (their hello), each once, in their order."""
    return list(dict.fromkeys(name for info in infos for name in info.models or ()))


@dataclass(frozen=True)
class AnnouncedModel:
    name: str  # as the model server calls it
    deployment: Deployment | None  # the pool's deployment that asks for it, if any
    create_url: str  # the create form, prefilled for a deployment served by the pool


def model_rows(pool: Deployment, names: Sequence[str]) -> list[AnnouncedModel]:
    """The announced models, each with the deployment of the pool (the server or one it serves) that
    already names it upstream, or a link to create one."""
    if not names:
        return []
    asking = {(d.upstream_model or d.name): d for d in [*pool.served_deployments.order_by("-name"), pool]}
    create = reverse("dashboard:deployment_create")
    return [
        AnnouncedModel(
            name=name,
            deployment=asking.get(name),
            create_url=f"{create}?"
            + urlencode({"served_by": pool.pk, "upstream_model": name, "name": suggest_deployment_name(name)}),
        )
        for name in names
    ]
