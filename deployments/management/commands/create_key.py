from django.core.management.base import BaseCommand, CommandError

from accounts.management.commands._util import clear_errors, get_org, rate_limit
from accounts.models import MAX_BUDGET_MICROS
from deployments.actions import create_api_key
from lib.money import micros_to_usd, usd_to_micros

from ._util import get_deployment


class Command(BaseCommand):
    help = "Create an API key for an organisation. Prints the key, once, as the last line."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, metavar="SLUG")
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--model", action="append", default=[], metavar="NAME", help="restrict to this deployment (repeatable)"
        )
        parser.add_argument("--rpm", type=rate_limit, help="requests per minute")
        parser.add_argument("--tpm", type=rate_limit, help="tokens per minute")
        parser.add_argument("--budget", metavar="USD", help="monthly spend cap in USD")

    def handle(self, *args, org, name, model, rpm, tpm, budget, **options):
        organisation = get_org(org)
        deployments = [get_deployment(m) for m in model]
        budget_micros = None
        if budget is not None:
            try:
                budget_micros = usd_to_micros(budget)
            except (ValueError, ArithmeticError) as exc:
                raise CommandError(f"--budget: {budget!r} is not a valid amount ({exc}).") from None
            if budget_micros > MAX_BUDGET_MICROS:
                raise CommandError(f"--budget: at most {micros_to_usd(MAX_BUDGET_MICROS):,.0f} USD a month.")
        with clear_errors():
            key, secret = create_api_key(
                org=organisation,
                name=name,
                deployments=deployments,
                rpm_limit=rpm,
                tpm_limit=tpm,
                monthly_budget_micros=budget_micros,
                actor_label="cli",
            )
        self.stdout.write(
            f"Created key {key.prefix}… ({key.name}) for {organisation.slug}. Store it now: it is shown once."
        )
        self.stdout.write(secret)
