from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from .models import ApiKey, AuditLog, Invitation, Membership, Organization, PersonalAccessToken, User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "name", "is_staff", "is_active", "date_joined"]
    search_fields = ["email", "name"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Profile", {"fields": ["name"]}),
        ("Permissions", {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "created_at", "rpm_limit", "tpm_limit", "monthly_budget_micros"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "org", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "org__slug"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    # The hash is not a secret that grants access, but there is no reason to show it either.
    exclude = ["key_hash"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "created_by"]
    list_display = ["prefix", "name", "org", "status", "created_at", "last_used_at"]
    list_filter = ["org"]
    search_fields = ["prefix", "name", "org__slug"]

    def has_add_permission(self, request):
        # Keys are created where the secret can be shown once: the dashboard, API or create_key.
        return False


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "org", "role", "created_at", "expires_at", "accepted_at", "revoked_at"]
    search_fields = ["email", "org__slug"]
    readonly_fields = ["prefix", "token_hash"]


@admin.register(PersonalAccessToken)
class PersonalAccessTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "org", "role", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = ["org"]
    search_fields = ["prefix", "name", "user__email", "org__slug"]
    # Who and where are fixed at creation; staff may shorten the life of a token (expiry, revocation).
    readonly_fields = ["prefix", "token_hash", "user", "org", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        # Tokens are made on the profile page, where the secret is shown once, after a password check.
        return False


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ["created_at", "org", "action", "target", "actor_display"]
    list_filter = ["action", "org"]
    search_fields = ["target", "actor__email"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False
