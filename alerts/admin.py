from django.contrib import admin

from .models import Alert, AlertSettings, AlertState, ConnectorEvent, Delivery, DeliveryAttempt, WebhookEndpoint


class ReadOnlyAdmin(admin.ModelAdmin):
    """Written by the evaluator, the deliveries and the tunnel: admins look, never edit."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AlertSettings)
class AlertSettingsAdmin(admin.ModelAdmin):
    list_display = ["org", "email_enabled", "budget_thresholds", "connector_down_minutes", "error_rate_percent"]
    list_select_related = ["org"]
    raw_id_fields = ["org"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """Endpoints are created where their secret can be shown (dashboard, API); here they can be
    looked at, disabled or deleted. The salts never appear."""

    list_display = ["org", "url", "description", "enabled", "prefix", "created_at"]
    list_filter = ["enabled"]
    list_select_related = ["org"]
    fields = ["org", "url", "description", "enabled", "prefix", "created_by", "created_at", "rotated_at"]
    readonly_fields = ["org", "url", "prefix", "created_by", "created_at", "rotated_at"]

    def has_add_permission(self, request):
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "org", "kind", "status", "title"]
    list_filter = ["kind", "status"]
    list_select_related = ["org"]
    date_hierarchy = "created_at"


@admin.register(AlertState)
class AlertStateAdmin(ReadOnlyAdmin):
    list_display = ["org", "kind", "subject", "threshold", "period", "active", "opened_at", "resolved_at"]
    list_filter = ["kind", "active"]
    list_select_related = ["org"]


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    readonly_fields = ["number", "started_at", "duration_ms", "ok", "http_status", "error", "response_excerpt"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "org", "alert", "channel", "endpoint", "status", "attempts"]
    list_filter = ["channel", "status"]
    list_select_related = ["org", "alert", "endpoint"]
    inlines = [DeliveryAttemptInline]


@admin.register(ConnectorEvent)
class ConnectorEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "deployment", "kind", "connector_id", "reason"]
    list_filter = ["kind"]
    list_select_related = ["deployment"]
