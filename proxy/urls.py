from django.urls import path, re_path

from .api import api
from .views import unknown_route

# /v1/ itself, before django-ninja's root view (an HTML 404), and any other path, line breaks
# included, answer the error contract's 404.
urlpatterns = [
    path("", unknown_route),
    path("", api.urls),
    re_path(r"^[\s\S]*$", unknown_route),
]
