from django.contrib import admin

from .models import RollupWatermark, Statement, StatementLine, UsageEvent, UsageRollup


class ReadOnlyAdmin(admin.ModelAdmin):
    """Metering data is written by the gateway and the roll-up only; admins look, never edit."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "request_id",
        "org",
        "deployment",
        "surface",
        "status_code",
        "input_tokens",
        "output_tokens",
        "usage_estimated",
        "cost_micros",
        "streamed",
        "cancelled",
    ]
    list_filter = ["surface", "status_code", "streamed", "cancelled", "usage_estimated"]
    search_fields = ["request_id"]
    list_select_related = ["org", "deployment"]
    date_hierarchy = "created_at"


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    list_display = [
        "period",
        "bucket_start",
        "org",
        "api_key",
        "deployment",
        "requests",
        "errors",
        "input_tokens",
        "output_tokens",
        "cost_micros",
    ]
    list_filter = ["period"]
    list_select_related = ["org", "api_key", "deployment"]
    date_hierarchy = "bucket_start"


@admin.register(RollupWatermark)
class RollupWatermarkAdmin(ReadOnlyAdmin):
    list_display = ["name", "last_event_id", "safe_event_id", "pruned_before", "updated_at"]


STATEMENT_LINE_FIELDS = ("deployment_name", "requests", "errors", "input_tokens", "output_tokens", "cost_micros")


class StatementLineInline(admin.TabularInline):
    model = StatementLine
    extra = 0
    can_delete = False
    fields = STATEMENT_LINE_FIELDS
    readonly_fields = STATEMENT_LINE_FIELDS

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Statement)
class StatementAdmin(ReadOnlyAdmin):
    list_display = ["org", "month", "requests", "input_tokens", "output_tokens", "total_usd", "updated_at"]
    list_filter = ["month"]
    list_select_related = ["org"]
    inlines = [StatementLineInline]
