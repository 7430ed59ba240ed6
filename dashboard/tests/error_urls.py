"""The site's URLs plus views that fail, for the error page tests (the real site has none)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.urls import path

from tokios_site.urls import handler403, handler404, handler500
from tokios_site.urls import urlpatterns as site_urlpatterns

__all__ = ["handler403", "handler404", "handler500", "urlpatterns"]


def boom(request):
    raise RuntimeError("a bug")


def refuse(request):
    raise PermissionDenied("Only owners can do this.")


urlpatterns = [
    path("boom/", boom),
    path("api/boom/", boom),
    path("api/refuse/", refuse),
    *site_urlpatterns,
]
