"""`/alerts/…`, included by dashboard/urls.py (names in the `dashboard` namespace)."""

from django.urls import path

from .views import alerts

urlpatterns = [
    path("", alerts.alerts, name="alerts"),
    path("settings/", alerts.alert_settings, name="alert_settings"),
    path("webhooks/", alerts.webhook_create, name="alert_webhook_create"),
    path("webhooks/<int:pk>/rotate/", alerts.webhook_rotate, name="alert_webhook_rotate"),
    path("webhooks/<int:pk>/delete/", alerts.webhook_delete, name="alert_webhook_delete"),
    path("webhooks/<int:pk>/toggle/", alerts.webhook_toggle, name="alert_webhook_toggle"),
    path("webhooks/<int:pk>/test/", alerts.webhook_test, name="alert_webhook_test"),
]
