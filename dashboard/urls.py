from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from .views import (
    audit,
    auth,
    deployment_state,
    deployments,
    keys,
    members,
    org_settings,
    overview,
    playground,
    requests,
    statements,
    usage,
)

app_name = "dashboard"

urlpatterns = [
    # Signing in and out, passwords, invitations.
    path("login/", auth.LoginView.as_view(), name="login"),
    path("logout/", auth.LogoutView.as_view(), name="logout"),
    path("password/reset/", auth.PasswordResetView.as_view(), name="password_reset"),
    path("password/reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("password/reset/<uidb64>/<token>/", auth.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("password/reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("password/change/", auth.PasswordChangeView.as_view(), name="password_change"),
    path("password/change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("invitations/<str:secret>/", auth.accept_invitation_view, name="accept_invitation"),
    path("orgs/switch/", auth.switch_org, name="switch_org"),
    path("profile/", auth.profile, name="profile"),
    path("profile/tokens/<int:pk>/revoke/", auth.revoke_token, name="profile_token_revoke"),
    # The org's pages.
    path("", overview.overview, name="overview"),
    path("deployments/", deployments.deployment_list, name="deployments"),
    path("deployments/new/", deployments.deployment_create, name="deployment_create"),
    path("deployments/<int:pk>/", deployments.deployment_detail, name="deployment_detail"),
    path("deployments/<int:pk>/prices/", deployments.deployment_prices, name="deployment_prices"),
    path("deployments/<int:pk>/routing/", deployments.deployment_routing, name="deployment_routing"),
    path("deployments/<int:pk>/live/", deployment_state.deployment_live, name="deployment_live"),
    path("deployments/<int:pk>/disable/", deployment_state.deployment_disable, name="deployment_disable"),
    path("deployments/<int:pk>/enable/", deployment_state.deployment_enable, name="deployment_enable"),
    path("deployments/<int:pk>/delete/", deployment_state.deployment_delete, name="deployment_delete"),
    path("deployments/<int:pk>/tokens/", deployments.token_create, name="deployment_token_create"),
    path(
        "deployments/<int:pk>/tokens/<int:token_pk>/revoke/", deployments.token_revoke, name="deployment_token_revoke"
    ),
    path("deployments/<int:pk>/grants/", deployments.grant_create, name="deployment_grant_create"),
    path(
        "deployments/<int:pk>/grants/<int:grant_pk>/revoke/", deployments.grant_revoke, name="deployment_grant_revoke"
    ),
    path("keys/", keys.key_list, name="keys"),
    path("keys/new/", keys.key_create, name="key_create"),
    path("keys/<int:pk>/", keys.key_detail, name="key_detail"),
    path("keys/<int:pk>/edit/", keys.key_edit, name="key_edit"),
    path("keys/<int:pk>/rotate/", keys.key_rotate, name="key_rotate"),
    path("keys/<int:pk>/rotate/end-grace/", keys.key_end_grace, name="key_end_grace"),
    path("keys/<int:pk>/pause/", keys.key_pause, name="key_pause"),
    path("keys/<int:pk>/resume/", keys.key_resume, name="key_resume"),
    path("keys/<int:pk>/expiry/", keys.key_expiry, name="key_expiry"),
    path("keys/<int:pk>/revoke/", keys.key_revoke, name="key_revoke"),
    path("playground/", playground.playground, name="playground"),
    path("playground/key/", playground.playground_key, name="playground_key"),
    path("usage/", usage.usage, name="usage"),
    path("usage.csv", usage.usage_csv, name="usage_csv"),
    path("requests/", requests.request_log, name="requests"),
    re_path(r"^requests/(?P<request_id>[A-Za-z0-9_]{1,64})/$", requests.request_detail, name="request_detail"),
    path("statements/", statements.statement_list, name="statements"),
    path("statements/<str:month>/", statements.statement_detail, name="statement_detail"),
    path("statements/<str:month>/csv/", statements.statement_csv, name="statement_csv"),
    path("members/", members.member_list, name="members"),
    path("members/add/", members.member_add, name="member_add"),
    path("members/<int:pk>/role/", members.member_role, name="member_role"),
    path("members/<int:pk>/remove/", members.member_remove, name="member_remove"),
    path("members/invitations/<int:pk>/revoke/", members.invitation_revoke, name="invitation_revoke"),
    path("members/share-id/", members.share_id_rotate, name="share_id_rotate"),
    path("audit/", audit.audit_log, name="audit"),
    path("settings/", org_settings.org_settings, name="org_settings"),
    path("alerts/", include("dashboard.alerts_urls")),
]
