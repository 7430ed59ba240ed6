from django.core.management.base import BaseCommand, CommandError

from accounts.management.commands._util import clear_errors, get_org
from deployments.actions import create_connector_token, create_deployment
from deployments.models import MAX_PRICE_MICROS
from lib.money import micros_to_usd, usd_to_micros

from ._util import get_deployment


def price(value: str | None, flag: str) -> int:
    if value is None:
        return 0
    try:
        micros = usd_to_micros(value)
    except (ValueError, ArithmeticError) as exc:
        raise CommandError(f"{flag}: {value!r} is not a valid USD amount per million tokens ({exc}).") from None
    if micros > MAX_PRICE_MICROS:
        raise CommandError(f"{flag}: at most {micros_to_usd(MAX_PRICE_MICROS):,.0f} USD per million tokens.")
    return micros


class Command(BaseCommand):
    help = (
        "Create a deployment (the `model` name clients send). Prints a connector token as the last line, "
        "unless --served-by names the deployment whose connectors serve it."
    )

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--org", required=True, metavar="SLUG")
        parser.add_argument("--upstream-model", default="", metavar="M")
        parser.add_argument("--price-input", metavar="USD_PER_MTOK")
        parser.add_argument("--price-output", metavar="USD_PER_MTOK")
        parser.add_argument(
            "--served-by", metavar="DEPLOYMENT", help="another deployment of the org whose connectors serve this one"
        )

    def handle(self, *args, name, org, upstream_model, price_input, price_output, served_by, **options):
        organisation = get_org(org)
        server = get_deployment(served_by) if served_by else None
        with clear_errors():
            deployment = create_deployment(
                org=organisation,
                name=name,
                upstream_model=upstream_model,
                price_input_micros=price(price_input, "--price-input"),
                price_output_micros=price(price_output, "--price-output"),
                served_by=server,
                actor_label="cli",
            )
            if server is not None:
                self.stdout.write(
                    f"Created deployment {deployment.name} for {organisation.slug}, served by {server.name}."
                )
                return
            token, secret = create_connector_token(deployment=deployment, name="initial", actor_label="cli")
        self.stdout.write(
            f"Created deployment {deployment.name} for {organisation.slug}; connector token {token.prefix}… (shown once):"
        )
        self.stdout.write(secret)
