"""Run a sync definition now, from the console, with a progress bar.

    manage.py sync_run <definition id> [--zip roster.zip] [--mode full|incremental|delta]

The run is recorded like one started from the admin (trigger "manual", actor the system
actor) and executed in this process.
"""

from __future__ import annotations

import threading
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from tqdm import tqdm

from bxos.common.audit import acting_as, system_actor
from integrations import services
from integrations.choices import SyncMode
from integrations.models import SyncDefinition, SyncRun


class Command(BaseCommand):
    help = "Run a sync definition now, with a progress bar."

    def add_arguments(self, parser) -> None:
        parser.add_argument("definition", type=int, help="Sync definition id.")
        parser.add_argument("--zip", type=Path, help="OneRoster CSV zip (upload connectors).")
        parser.add_argument("--mode", choices=SyncMode.values, help="Override the mode.")

    def handle(self, *args, **options) -> None:
        definition = SyncDefinition.objects.filter(pk=options["definition"]).first()
        if definition is None:
            raise CommandError(f"no sync definition #{options['definition']}")
        actor = system_actor()
        upload = None
        if options["zip"]:
            if not options["zip"].is_file():
                raise CommandError(f"{options['zip']} is not a file")
            upload = File(open(options["zip"], "rb"), options["zip"].name)  # noqa: SIM115
        try:
            with acting_as(actor):
                run = services.run_start(
                    definition=definition,
                    actor=actor,
                    upload=upload,
                    mode=options["mode"],
                    enqueue=False,
                )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        finally:
            if upload is not None:
                upload.close()
        result: dict = {}

        def execute() -> None:
            try:
                result["run"] = services.run_execute(run=run, actor=actor)
            finally:
                connections.close_all()  # this thread's own connection

        worker = threading.Thread(target=execute)
        worker.start()
        show = options["verbosity"] > 0
        stream = getattr(self.stderr, "_out", self.stderr)
        with tqdm(total=0, unit="rec", disable=not show, desc=f"run #{run.pk}", file=stream) as bar:
            while worker.is_alive():
                worker.join(0.5)
                row = SyncRun.objects.filter(pk=run.pk).values("processed", "total", "phase")[0]
                bar.total = max(row["total"], row["processed"], 1)
                bar.n = row["processed"]
                bar.set_postfix_str(row["phase"][:40])
                bar.refresh()
        run = result.get("run") or SyncRun.objects.get(pk=run.pk)
        self.stdout.write(f"run #{run.pk}: {run.status}: {run.message}")
        for warning in run.warnings:
            self.stdout.write(f"warning: {warning}")
        errors = run.errors.count()
        if errors:
            self.stdout.write(f"{errors} record error(s); download them from the run's page")
