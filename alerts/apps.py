from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The tunnel (proxy, a layer below) announces connects and disconnects with a signal and
        # never imports this app; the history they leave is what flapping is judged on.
        from . import receivers

        receivers.listen()
