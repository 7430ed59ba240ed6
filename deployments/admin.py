from django.contrib import admin

from .models import ConnectorToken, Deployment, ModelGrant


class GrantInline(admin.TabularInline):
    model = ModelGrant
    extra = 0
    fk_name = "deployment"


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["name", "org", "upstream_model", "price_input_micros", "price_output_micros", "created_at"]
    list_filter = ["org"]
    search_fields = ["name", "org__slug"]
    inlines = [GrantInline]


@admin.register(ConnectorToken)
class ConnectorTokenAdmin(admin.ModelAdmin):
    exclude = ["token_hash"]
    readonly_fields = ["prefix", "deployment", "created_at", "last_seen_at", "created_by"]
    list_display = ["prefix", "name", "deployment", "created_at", "last_seen_at", "revoked_at"]
    search_fields = ["prefix", "deployment__name"]

    def has_add_permission(self, request):
        return False


@admin.register(ModelGrant)
class ModelGrantAdmin(admin.ModelAdmin):
    list_display = ["deployment", "org", "created_at"]
    search_fields = ["deployment__name", "org__slug"]
