"""What the evaluator checks every minute (the `alerts.evaluate` task), once per org:

- **budget**: the month's spend of the org, and of each key, against its monthly budget. Each
  configured threshold fires once per (subject, threshold, UTC month); there is no "resolved".
  Spend is billing's month-to-date figure (rollups plus events not rolled up yet).
- **connector_down**: a deployment that has had a connector (a token of it was seen) and still has
  an unrevoked token, with no connector for `connector_down_minutes`. Online means a token seen
  within the heartbeat timeout (the tunnel writes `last_seen_at` at every heartbeat, so this holds
  across processes and in the embedded default) or live in Redis presence. Resolves when a
  connector is back.
- **connector_flapping**: at least `flapping_connects` connects of a deployment's connectors in
  the last `flapping_window_minutes`; resolves when fewer than half as many happened in the window.
- **error_rate**: with at least `error_rate_min_requests` requests in the last
  `error_rate_window_minutes`, the share answered 5xx is `error_rate_percent` or more; resolves when
  it falls below half of that (fewer requests leave the episode as it is).

Every alert belongs to an episode (AlertState); it turns with a conditional UPDATE, so a run that
overlaps another, or runs twice, raises nothing twice. One org's failure is logged and the run goes
on with the others.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone
from redis.exceptions import RedisError

from accounts.models import ApiKey, Organization
from billing.models import UsageEvent
from billing.periods import month_label
from billing.queries import spent_this_month
from deployments.models import Deployment
from lib.money import micros_to_usd
from proxy.tunnel import presence

from .models import AlertKind, AlertSettings, AlertState, AlertStatus, ConnectorEvent, ConnectorEventKind
from .raising import Raised, raise_alert

log = logging.getLogger("tokios.alerts")

StateKey = tuple[str, str, int, str]  # kind, subject, threshold, period


def usd(micros: int) -> str:
    """Dollars to the cent, as people read a budget: $1,234.50."""
    return f"${micros_to_usd(micros).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def online_freshness() -> timedelta:
    """How recent a token's `last_seen_at` must be for its deployment to count as online."""
    return timedelta(seconds=max(settings.HEARTBEAT_TIMEOUT, 2 * settings.HEARTBEAT_INTERVAL))


def evaluate(*, now: datetime | None = None) -> list[Raised]:
    """Check every org's rules once; return the alerts raised (their deliveries are committed)."""
    now = now or timezone.now()
    rules_by_org = {rules.org_id: rules for rules in AlertSettings.objects.all()}
    raised: list[Raised] = []
    for org in Organization.objects.order_by("pk").iterator():
        rules = rules_by_org.get(org.pk) or AlertSettings(org=org)
        try:
            raised += OrgEvaluation(org, rules, now).run()
        except Exception:
            log.exception("alert evaluation failed for org %s; the others go on", org.pk)
    return raised


class OrgEvaluation:
    """One org's checks in one run."""

    def __init__(self, org: Organization, rules: AlertSettings, now: datetime) -> None:
        self.org = org
        self.rules = rules
        self.now = now
        self.raised: list[Raised] = []
        self.active: set[StateKey] = {
            (s.kind, s.subject, s.threshold, s.period)
            for s in AlertState.objects.filter(org=org, active=True).only("kind", "subject", "threshold", "period")
        }

    def run(self) -> list[Raised]:
        if self.rules.budget_enabled and self.rules.thresholds:
            self.budgets()
        if self.rules.connector_down_enabled or self.rules.flapping_enabled:
            deployments = list(
                Deployment.objects.for_org(self.org).annotate(
                    last_seen=Max("connector_tokens__last_seen_at"),
                    usable_tokens=Count("connector_tokens", filter=Q(connector_tokens__revoked_at__isnull=True)),
                )
            )
            if self.rules.connector_down_enabled:
                self.connectors_down(deployments)
            if self.rules.flapping_enabled:
                self.flapping(deployments)
        if self.rules.error_rate_enabled:
            self.error_rate()
        return self.raised

    # --- episodes -------------------------------------------------------------------------------------

    def open(self, key: StateKey, *, title: str, data: dict) -> None:
        """Start an episode and raise its alert, unless it is running already."""
        if key in self.active:
            return
        kind, subject, threshold, period = key
        with transaction.atomic():
            state, _ = AlertState.objects.get_or_create(
                org=self.org, kind=kind, subject=subject, threshold=threshold, period=period
            )
            turned = AlertState.objects.filter(pk=state.pk, active=False).update(
                active=True, opened_at=self.now, resolved_at=None, updated_at=self.now
            )
            if turned:
                self.raised.append(self._raise(kind, AlertStatus.FIRING, subject, title, data))
        self.active.add(key)

    def close(self, key: StateKey, *, title: str, data: dict) -> None:
        """End a running episode and raise its "resolved" alert."""
        if key not in self.active:
            return
        kind, subject, threshold, period = key
        with transaction.atomic():
            turned = AlertState.objects.filter(
                org=self.org, kind=kind, subject=subject, threshold=threshold, period=period, active=True
            ).update(active=False, resolved_at=self.now, updated_at=self.now)
            if turned:
                self.raised.append(self._raise(kind, AlertStatus.RESOLVED, subject, title, data))
        self.active.discard(key)

    def _raise(self, kind: str, status: str, subject: str, title: str, data: dict) -> Raised:
        return raise_alert(
            org=self.org,
            rules=self.rules,
            kind=kind,
            status=status,
            subject=subject,
            title=title,
            data=data,
            now=self.now,
        )

    # --- budgets ----------------------------------------------------------------------------------------

    def budgets(self) -> None:
        period = month_label(self.now)
        subjects: list[tuple[str, str, int, int | None]] = []  # subject, label, budget, key id
        if self.org.monthly_budget_micros:
            subjects.append(("org", f"organisation {self.org.slug}", self.org.monthly_budget_micros, None))
        keys = ApiKey.objects.for_org(self.org).filter(monthly_budget_micros__gt=0, revoked_at__isnull=True)
        for key in keys.only("id", "name", "prefix", "monthly_budget_micros"):
            budget = key.monthly_budget_micros or 0
            subjects.append((f"key:{key.pk}", f"key “{key.name}” ({key.prefix}…)", budget, key.pk))
        for subject, label, budget, key_id in subjects:
            pending = [t for t in self.rules.thresholds if (AlertKind.BUDGET, subject, t, period) not in self.active]
            if not pending:
                continue  # every threshold fired this month: no need to ask what was spent
            spent = spent_this_month(org_id=self.org.pk, key_id=key_id, now=self.now)["cost_micros"]
            for threshold in pending:
                if spent * 100 >= threshold * budget:
                    title = (
                        f"{self.org.name}: {label} has spent {threshold}% of its monthly budget "
                        f"({usd(spent)} of {usd(budget)}, {period})"
                    )
                    data = {
                        "subject": subject,
                        "threshold_percent": threshold,
                        "period": period,
                        "spent_micros": spent,
                        "budget_micros": budget,
                        "key_id": key_id,
                    }
                    self.open((AlertKind.BUDGET, subject, threshold, period), title=title, data=data)

    # --- connectors -------------------------------------------------------------------------------------

    def _online(self, deployments: list[Deployment]) -> set[int]:
        fresh_after = self.now - online_freshness()
        online = {d.pk for d in deployments if d.last_seen is not None and d.last_seen >= fresh_after}  # type: ignore[attr-defined]
        unsure = [d.pk for d in deployments if d.pk not in online]
        if unsure:
            try:
                online |= presence.online_deployment_ids(unsure)
            except (RedisError, OSError):
                log.warning("connector presence unreadable; judging connectors by their last heartbeat only")
        return online

    def connectors_down(self, deployments: list[Deployment]) -> None:
        watched = [d for d in deployments if d.last_seen is not None and d.usable_tokens]  # type: ignore[attr-defined]
        watched = [d for d in watched if d.disabled_at is None]  # a disabled one may well be without
        online = self._online(watched)
        limit = timedelta(minutes=self.rules.connector_down_minutes)
        for deployment in watched:
            key = (AlertKind.CONNECTOR_DOWN, f"deployment:{deployment.pk}", 0, "")
            last_seen: datetime = deployment.last_seen  # type: ignore[attr-defined]
            data = {
                "deployment": deployment.name,
                "deployment_id": deployment.pk,
                "last_seen_at": last_seen.isoformat(),
                "minutes": self.rules.connector_down_minutes,
            }
            if deployment.pk in online:
                self.close(key, title=f"{self.org.name}: a connector is back for {deployment.name}", data=data)
            elif self.now - last_seen >= limit:
                title = (
                    f"{self.org.name}: no connector for {deployment.name} since {last_seen:%Y-%m-%d %H:%M} UTC "
                    f"({self.rules.connector_down_minutes} min or more)"
                )
                self.open(key, title=title, data=data)

    def flapping(self, deployments: list[Deployment]) -> None:
        window = self.rules.flapping_window_minutes
        counts = dict(
            ConnectorEvent.objects.filter(
                deployment__org=self.org,
                kind=ConnectorEventKind.CONNECTED,
                at__gt=self.now - timedelta(minutes=window),
                at__lte=self.now,
            )
            .values_list("deployment")
            .annotate(n=Count("id"))
            .order_by()
        )
        threshold = self.rules.flapping_connects
        for deployment in deployments:
            count = counts.get(deployment.pk, 0)
            key = (AlertKind.CONNECTOR_FLAPPING, f"deployment:{deployment.pk}", 0, "")
            data = {
                "deployment": deployment.name,
                "deployment_id": deployment.pk,
                "connects": count,
                "window_minutes": window,
                "threshold": threshold,
            }
            if count >= threshold:
                title = f"{self.org.name}: connectors of {deployment.name} connected {count} times in {window} min"
                self.open(key, title=title, data=data)
            elif count * 2 < threshold:
                self.close(key, title=f"{self.org.name}: connectors of {deployment.name} are steady again", data=data)

    # --- error rate -------------------------------------------------------------------------------------

    def error_rate(self) -> None:
        window = self.rules.error_rate_window_minutes
        totals = (
            UsageEvent.objects.filter(
                org=self.org, created_at__gt=self.now - timedelta(minutes=window), created_at__lte=self.now
            )
            .order_by()
            # A disabled deployment's 503s are the admin's choice, not a failure to be alerted about.
            .aggregate(
                requests=Count("id"),
                errors=Count("id", filter=Q(status_code__gte=500) & ~Q(error_code="deployment_disabled")),
            )
        )
        requests, errors = totals["requests"] or 0, totals["errors"] or 0
        if requests < self.rules.error_rate_min_requests:
            return
        percent = self.rules.error_rate_percent
        key = (AlertKind.ERROR_RATE, "org", 0, "")  # not keyed by the percent: a change must not orphan an episode
        data = {"requests": requests, "errors": errors, "window_minutes": window, "threshold_percent": percent}
        if errors * 100 >= percent * requests:
            title = f"{self.org.name}: {errors} of {requests} requests failed (5xx) in the last {window} min"
            self.open(key, title=title, data=data)
        elif errors * 200 < percent * requests:
            self.close(key, title=f"{self.org.name}: the error rate is back under {percent}%", data=data)
