from django.core.management.base import BaseCommand

from accounts.management.commands._util import clear_errors, get_org
from deployments.actions import grant_model

from ._util import get_deployment


class Command(BaseCommand):
    help = "Let another organisation's keys call a deployment."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, metavar="SLUG")
        parser.add_argument("--deployment", required=True, metavar="NAME")

    def handle(self, *args, org, deployment, **options):
        organisation = get_org(org)
        target = get_deployment(deployment)
        with clear_errors():
            grant_model(deployment=target, org=organisation, actor_label="cli")
        self.stdout.write(f"granted {organisation.slug} access to {target.name}")
