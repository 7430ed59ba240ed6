from django.urls import path, re_path

from .api import api
from .views import unknown_route

urlpatterns = [
    path("", api.urls),
    re_path(r"^.*$", unknown_route),
]
