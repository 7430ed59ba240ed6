from django.core.management.base import BaseCommand, CommandError

from accounts.actions import revoke_api_key
from accounts.models import ApiKey


class Command(BaseCommand):
    help = "Revoke an API key by its display prefix (e.g. sk-tokios-AbCd1234)."

    def add_arguments(self, parser):
        parser.add_argument("prefix")

    def handle(self, *args, prefix, **options):
        prefix = prefix.rstrip("…").rstrip(".")
        matches = list(ApiKey.objects.select_related("org").filter(prefix=prefix))
        if not matches:
            raise CommandError(f"No API key with prefix {prefix!r}.")
        key = matches[0]
        if key.revoked_at is not None:
            raise CommandError(f"The key {prefix} is already revoked.")
        revoke_api_key(key=key, actor_label="cli")
        self.stdout.write(f"revoked {key.prefix}")
