from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand

from runs.services import runs_interrupt


class Command(BaseCommand):
    help = (
        "Marks runs left streaming by a stopped server as failed (interrupted), keeping the reply "
        "as far as it got. Run it before starting daphne. With the in-memory channel layer (one "
        "process) every active run is an orphan at startup; with Redis (several processes) only "
        "runs whose relay has stopped sending heartbeats are."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--all", action="store_true", help="interrupt every active run, heartbeat or not"
        )

    def handle(self, *args, **options):
        single_process = not settings.REDIS_URL
        stale_after = (
            None
            if options["all"] or single_process
            else timedelta(seconds=3 * settings.CHAT_RELAY_HEARTBEAT_SECONDS)
        )
        frames = runs_interrupt(stale_after=stale_after)
        self.stdout.write(f"Interrupted runs: {len(frames)}")
