from django.contrib import admin

from .models import UsageEvent


@admin.register(UsageEvent)
class UsageEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "request_id", "org", "deployment", "surface", "status_code", "input_tokens", "output_tokens"]
    list_filter = ["surface", "status_code"]
    search_fields = ["request_id"]

    def has_change_permission(self, request, obj=None):
        return False
