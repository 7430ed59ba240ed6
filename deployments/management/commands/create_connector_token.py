from django.core.management.base import BaseCommand

from accounts.management.commands._util import clear_errors
from deployments.actions import create_connector_token

from ._util import get_deployment


class Command(BaseCommand):
    help = "Create a further connector token for a deployment. Prints it as the last line."

    def add_arguments(self, parser):
        parser.add_argument("name", help="deployment name")
        parser.add_argument("--label", default="", help="a note to tell tokens apart")

    def handle(self, *args, name, label, **options):
        deployment = get_deployment(name)
        with clear_errors():
            token, secret = create_connector_token(deployment=deployment, name=label, actor_label="cli")
        self.stdout.write(f"Connector token {token.prefix}… for {deployment.name} (shown once):")
        self.stdout.write(secret)
