"""`make run`: database, migrations, demo district, web server, Celery worker and beat.

Starts everything a developer or an evaluator needs with no service installed by hand, prints
the URLs and demo logins, and on Ctrl-C (or SIGTERM) stops every process it started, including
the embedded PostgreSQL. Running it again keeps the data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the whole stack for development: web, Celery worker and beat."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-seed", action="store_true", help="Do not load the demo district.")
        parser.add_argument(
            "--reload", action="store_true", help="Restart the web server on code edits."
        )

    def handle(self, *args, **options):
        self.stdout.write("Applying migrations...")
        call_command("migrate", interactive=False, verbosity=0)
        if not options["no_seed"]:
            from bxos.schools.models import District

            if not District.objects.exists():
                self.stdout.write("Empty database: loading the demo district (seed_demo)...")
                call_command("seed_demo")
        host, port = options["host"], options["port"]
        self._check_port_free(host, port)

        python = sys.executable
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        beat_schedule = str(Path(settings.VAR_DIR) / "celerybeat-schedule")
        web = [python, manage, "runserver", f"{host}:{port}"]
        if not options["reload"]:
            web.append("--noreload")
        commands = {
            "web": web,
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "bxos",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--hostname",
                "worker@%h",
            ],
            "beat": [
                python,
                "-m",
                "celery",
                "-A",
                "bxos",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                beat_schedule,
            ],
        }
        # Handlers first: a Ctrl-C that arrives while the children start must not be lost (a
        # background job of a script starts with SIGINT ignored until we install ours).
        stopping = {"flag": False}

        def stop(signum, frame):
            stopping["flag"] = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        processes: dict[str, subprocess.Popen] = {}
        # Our own process group for each child, so one signal stops a child and its children.
        for name, command in commands.items():
            processes[name] = subprocess.Popen(command, start_new_session=True)

        # Print the banner once the web server answers, so the worker's start-up output does
        # not scroll it away.
        if self._wait_for_port(host, port, processes["web"], stopping):
            self._print_banner(host, port)
        exit_code = 0
        try:
            while not stopping["flag"]:
                for name, proc in processes.items():
                    if proc.poll() is not None:
                        self.stderr.write(f"{name} exited with code {proc.returncode}; stopping.")
                        stopping["flag"] = True
                        exit_code = 1
                time.sleep(0.5)
        finally:
            self._stop_all(processes)
        raise SystemExit(exit_code)

    def _check_port_free(self, host: str, port: int) -> None:
        import socket

        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                raise CommandError(
                    f"Port {port} on {host} is in use. Stop what runs there, "
                    "or choose another port: PORT=8001 make run."
                )

    def _wait_for_port(
        self, host: str, port: int, web: subprocess.Popen, stopping: dict, timeout: float = 60
    ) -> bool:
        """Whether the web server answers; waits a moment more for the other banners."""
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and web.poll() is None:
            with socket.socket() as s:
                if s.connect_ex((host, port)) == 0:
                    # Let the worker and beat print their banners first (unless stopping).
                    settle = time.monotonic() + 1.5
                    while time.monotonic() < settle and not stopping["flag"]:
                        time.sleep(0.1)
                    return True
            if stopping["flag"]:
                return False
            time.sleep(0.3)
        return False

    def _stop_all(self, processes: dict[str, subprocess.Popen]) -> None:
        self.stdout.write("\nStopping web, worker and beat...")
        for proc in processes.values():
            if proc.poll() is None:
                # The main process only: a Celery worker then stops its own pool cleanly
                # (signalling the whole group kills the pool under it, and it respawns it).
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if not os.environ.get("DATABASE_URL"):
            from django.db import connections

            from bxos.common.embedded_pg import stop_server

            connections.close_all()
            if stop_server(Path(settings.VAR_DIR)):
                self.stdout.write("Stopped the embedded PostgreSQL.")
        self.stdout.write("All stopped. Your data is kept under var/; `make run` resumes it.")

    def _print_banner(self, host: str, port: int) -> None:
        base = f"http://{host}:{port}"
        try:
            from bxos.schools.demo import DEMO_LOGINS, DEMO_PASSWORD
        except ImportError:  # seeding is optional for this command
            DEMO_LOGINS, DEMO_PASSWORD = [], ""
        rule = "=" * 72
        lines = [
            "",
            rule,
            "BX-OS Integration Hub is running.",
            f"  Admin:        {base}/admin/",
            f"  Health check: {base}/healthz",
            f"  OAuth2:       {base}/o/",
            "",
        ]
        if DEMO_LOGINS:
            lines.append(f"Demo logins (password for all: {DEMO_PASSWORD}):")
            for username, description in DEMO_LOGINS:
                lines.append(f"  {username:<18} {description}")
            lines.append("")
        lines.append("Press Ctrl-C to stop web, worker, beat and the database.")
        lines.append(rule)
        self.stdout.write("\n".join(lines))
