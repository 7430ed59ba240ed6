from django.contrib import admin

from .models import ConnectorToken, Deployment, DeploymentFallback, ModelGrant


class GrantInline(admin.TabularInline):
    model = ModelGrant
    extra = 0
    fk_name = "deployment"


class FallbackInline(admin.TabularInline):
    model = DeploymentFallback
    extra = 0
    fk_name = "deployment"
    autocomplete_fields = ["fallback"]


class AllowedKeyInline(admin.TabularInline):
    """Keys limited to a list of models that includes this one. The list is the deployment's
    (Deployment.allowed_keys), so it is edited here rather than on the key's page."""

    model = Deployment.allowed_keys.through
    extra = 0
    autocomplete_fields = ["apikey"]
    verbose_name = "key limited to this model"
    verbose_name_plural = "keys limited to this model (a key with “all models” set ignores its list)"


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["name", "org", "upstream_model", "price_input_micros", "price_output_micros", "created_at"]
    list_filter = ["org"]
    search_fields = ["name", "org__slug"]
    exclude = ["allowed_keys"]  # every key of every org; the inline lists only the limited ones
    inlines = [GrantInline, FallbackInline, AllowedKeyInline]
    autocomplete_fields = ["served_by"]


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
