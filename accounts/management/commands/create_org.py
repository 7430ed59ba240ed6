from django.core.management.base import BaseCommand
from django.core.validators import validate_email

from accounts.actions import create_org
from accounts.models import User
from accounts.onboarding import link_expiry, set_password_link

from ._util import clear_errors, server_address


class Command(BaseCommand):
    help = (
        "Create an organisation. Prints its slug as the last line. An owner who has no password yet gets "
        "a one-time link to choose one, printed here once (it is stored nowhere and never logged)."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--owner", metavar="EMAIL", help="make this user (created if new) the owner")
        parser.add_argument(
            "--server",
            type=server_address,
            default="http://127.0.0.1:8000",
            help="the address users open the dashboard at, for the owner's set-password link "
            "(default: http://127.0.0.1:8000)",
        )

    def handle(self, *args, slug, name, owner, server, **options):
        with clear_errors():
            user = None
            if owner:
                validate_email(owner)
                user = User.objects.filter(email=owner.lower()).first() or User.objects.create_user(owner)
            org = create_org(slug=slug, name=name, owner=user, actor_label="cli")
        if user is not None and not user.has_usable_password():
            expires = link_expiry()
            self.stdout.write(f"{user.email} has no password yet. Send them this link to choose one:")
            self.stdout.write(f"  {set_password_link(user=user, server=server)}")
            self.stdout.write(
                f"  It works once, until {expires:%Y-%m-%d %H:%M} UTC; this is the only time it is shown. "
                "Later, they can use “Forgot your password?” on the sign-in page."
            )
        self.stdout.write(org.slug)
