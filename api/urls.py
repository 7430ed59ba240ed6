from django.urls import include, path
from rest_framework.routers import SimpleRouter

from . import breakdown, deployment_state, docs, org_settings, requests, views

app_name = "api"

router = SimpleRouter(use_regex_path=False)
router.register("orgs/<slug:org>/keys", views.ApiKeyViewSet, basename="keys")
router.register("orgs/<slug:org>/deployments", deployment_state.DeploymentViewSet, basename="deployments")
router.register(
    "orgs/<slug:org>/deployments/<int:deployment_pk>/tokens", views.ConnectorTokenViewSet, basename="tokens"
)
router.register("orgs/<slug:org>/deployments/<int:deployment_pk>/grants", views.GrantViewSet, basename="grants")
router.register("orgs/<slug:org>/members", views.MemberViewSet, basename="members")
router.register("orgs/<slug:org>/invitations", views.InvitationViewSet, basename="invitations")
router.register("orgs/<slug:org>/statements", views.StatementViewSet, basename="statements")

urlpatterns = [
    path("", views.ApiRoot.as_view(), name="root"),
    path("orgs/", views.OrgList.as_view(), name="orgs"),
    path("orgs/<slug:org>/usage/", views.UsageView.as_view(), name="usage"),
    path("orgs/<slug:org>/usage/breakdown/", breakdown.UsageBreakdownView.as_view(), name="usage-breakdown"),
    path("orgs/<slug:org>/settings/", org_settings.OrgSettingsView.as_view(), name="org-settings"),
    path("orgs/<slug:org>/requests/", requests.RequestLogView.as_view(), name="requests"),
    path("orgs/<slug:org>/alerts/", include("api.alerts_urls")),
    path("schema/", docs.schema_view, name="schema"),
    path("docs/", docs.api_docs, name="docs"),
    *router.urls,
]
