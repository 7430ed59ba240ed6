from django.core.management.base import BaseCommand

from accounts.actions import create_org
from accounts.models import User

from ._util import clear_errors


class Command(BaseCommand):
    help = "Create an organisation. Prints its slug as the last line."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--owner", metavar="EMAIL", help="make this user (created if new) the owner")

    def handle(self, *args, slug, name, owner, **options):
        with clear_errors():
            user = None
            if owner:
                from django.core.validators import validate_email

                validate_email(owner)
                user = User.objects.filter(email=owner.lower()).first() or User.objects.create_user(owner)
            org = create_org(slug=slug, name=name, owner=user, actor_label="cli")
        self.stdout.write(org.slug)
