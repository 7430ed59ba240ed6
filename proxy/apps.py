from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The apps below the gateway never import it: the gateway listens to their model signals
        # and to the ones they send (proxy/access.py). Imported here, once the models are loaded.
        from . import access

        access.listen()
