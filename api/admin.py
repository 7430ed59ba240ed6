from django.contrib import admin

from .models import PersonalAccessToken


@admin.register(PersonalAccessToken)
class PersonalAccessTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "expires_at", "revoked_at"]
    search_fields = ["prefix", "name", "user__email"]
    readonly_fields = ["prefix", "token_hash", "created_at", "last_used_at"]
