"""`/api/orgs/<org>/alerts/…`, included by api/urls.py (names in the `api` namespace)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import alerts

router = SimpleRouter(use_regex_path=False)
router.register("webhooks", alerts.WebhookEndpointViewSet, basename="alert-webhooks")
router.register("history", alerts.AlertViewSet, basename="alert-history")
router.register("deliveries", alerts.DeliveryViewSet, basename="alert-deliveries")

urlpatterns = [
    path("settings/", alerts.AlertSettingsView.as_view(), name="alert-settings"),
    *router.urls,
]
