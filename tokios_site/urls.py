from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("v1/", include("proxy.urls")),
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    path("api/", include("api.urls")),
    path("", include("dashboard.urls")),
]
