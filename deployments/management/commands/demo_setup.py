from django.core.management.base import BaseCommand

from accounts.actions import add_member, create_api_key, create_org
from accounts.management.commands._util import server_address
from accounts.models import Organization, Role, User
from accounts.onboarding import link_expiry, set_password_link
from deployments.actions import create_connector_token, create_deployment
from deployments.connector import connector_command
from deployments.models import Deployment


class Command(BaseCommand):
    help = "Create (or reuse) a demo org, deployment and user; print a fresh connector token and API key."

    def add_arguments(self, parser):
        parser.add_argument("--server", type=server_address, default="http://127.0.0.1:8000")

    def handle(self, *args, server, **options):
        org = Organization.objects.filter(slug="demo").first() or create_org(
            slug="demo", name="Demo", actor_label="cli"
        )
        user = User.objects.filter(email="admin@demo.local").first()
        if user is None:
            # No password: the admin chooses one through a one-time link (below), which stops working
            # once used or after PASSWORD_RESET_TIMEOUT. A printed password would stay valid in the
            # terminal's scrollback and any captured log for as long as nobody changes it.
            user = User.objects.create_user("admin@demo.local", None, is_staff=True, is_superuser=True)
            add_member(org=org, user=user, role=Role.OWNER, actor_label="cli")
        deployment = Deployment.objects.filter(name="gemma-tunnel").first() or create_deployment(
            org=org, name="gemma-tunnel", price_input_micros=100_000, price_output_micros=400_000, actor_label="cli"
        )
        _, token = create_connector_token(deployment=deployment, name="demo", actor_label="cli")
        _, key = create_api_key(org=org, name="demo key", actor_label="cli")
        out = self.stdout.write
        out("")
        out("Tokios demo is ready.")
        if user.has_usable_password():
            out(f"  Dashboard:        {server}/  sign in as admin@demo.local with the password you chose")
            out("                    (forgot it? `manage.py changepassword admin@demo.local`)")
        else:
            out(f"  Dashboard:        {server}/  as admin@demo.local: choose its password here first")
            out(f"    {set_password_link(user=user, server=server)}")
            out(f"    (works once, until {link_expiry():%Y-%m-%d %H:%M} UTC; run this again for a new one)")
        out(f"  Connector token:  {token}")
        out("  Start a connector beside your model:")
        out(f"    {connector_command(server, token)}")
        out(f"  API key:          {key}")
        out(f"  Try it:  curl {server}/v1/chat/completions -H 'Authorization: Bearer {key}' \\")
        out(
            '             -H \'content-type: application/json\' -d \'{"model":"gemma-tunnel","messages":[{"role":"user","content":"Hi"}]}\''
        )
        out("")
