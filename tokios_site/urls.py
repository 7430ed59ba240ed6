from django.contrib import admin
from django.urls import include, path

from . import health
from .metrics import metrics_view

urlpatterns = [
    path("v1/", include("proxy.urls")),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics_view, name="metrics"),
    path("api/", include("api.urls")),
    path("", include("dashboard.urls")),
]

# Error pages in the dashboard's frame; /api/ keeps JSON (dashboard/views/errors.py).
handler403 = "dashboard.views.errors.permission_denied"
handler404 = "dashboard.views.errors.page_not_found"
handler500 = "dashboard.views.errors.server_error"
