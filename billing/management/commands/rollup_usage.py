from django.core.management.base import BaseCommand

from billing import rollups, statements


class Command(BaseCommand):
    help = "Roll usage events up now (what the Celery beat does every minute); optionally build statements and prune."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--statements", action="store_true", help="also rebuild this month's statements")
        parser.add_argument("--prune", action="store_true", help="also prune events past USAGE_RETENTION_DAYS")

    def handle(self, *args, **options) -> None:
        result = rollups.roll_up()
        self.stdout.write(f"rolled up {result.hours} hour(s), {result.days} day(s) to event {result.last_event_id}")
        if options["statements"]:
            self.stdout.write(f"built {statements.build_statements()} statement(s)")
        if options["prune"]:
            self.stdout.write(f"pruned {rollups.prune_events()} event(s)")
