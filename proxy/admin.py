from django.contrib import admin

from .models import StoredResponse


@admin.register(StoredResponse)
class StoredResponseAdmin(admin.ModelAdmin):
    list_display = ["id", "org", "model", "created_at"]
    list_filter = ["org"]
    search_fields = ["id"]
    readonly_fields = ["id", "org", "api_key", "model", "items", "response", "created_at"]

    def has_add_permission(self, request):
        return False
