"""`make run`: database, migrations, demo district, web server, Celery worker and beat.

Starts everything a developer or an evaluator needs with no service installed by hand, prints
the URLs and demo logins, and on Ctrl-C (or SIGTERM) stops every process it started, including
the embedded PostgreSQL. Running it again keeps the data.

The worker and beat are supervised as production supervisors (systemd, Kubernetes) would: one
that exits on its own is logged and started again after a backoff (1 s, doubling to 30 s; back
to 1 s once it has run for a minute). The web server is not: if it exits, the stack stops, as
its error (a port taken, a broken settings file) is what the developer needs to see. The worker
is started with the options that make it ride out a broker restart (see ``worker_command``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError


def reconnect_options() -> list[str]:
    """``celery worker`` arguments that make it ride out a broker restart (put them last).

    With Redis, a worker whose broker connection drops while it holds an unacknowledged
    message (an ``acks_late`` task running, or one prefetched) exits with "Unrecoverable
    error: AttributeError: 'NoneType' object has no attribute 'hostname'" instead of
    reconnecting (Celery 5.7, kombu 5.7; celery/kombu#582): closing the broken channel deletes
    its auto-delete fanout queues first (remote control's pidbox, gossip's events), that fails,
    the channel stays half-closed, and the second close, after kombu has dropped the transport's
    connection info, restores the unacked messages through it. A worker with no fanout queue on
    its connection reconnects: remote control off and no gossip. It also retries the broker for
    ever rather than 100 times. Both are settings (CELERY_WORKER_ENABLE_REMOTE_CONTROL,
    CELERY_BROKER_CONNECTION_MAX_RETRIES), read by every worker; gossip has only this flag.
    """
    return ["--without-gossip"]


def worker_command(python: str) -> list[str]:
    """The Celery worker as `make run` starts it (see ``reconnect_options``)."""
    return [
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
        *reconnect_options(),
    ]


def beat_command(python: str, schedule: str) -> list[str]:
    return [
        python,
        "-m",
        "celery",
        "-A",
        "bxos",
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        schedule,
    ]


@dataclass
class Child:
    """A process the supervisor runs, in a process group of its own (one signal can stop it
    and its children; a Ctrl-C in the terminal reaches only the supervisor)."""

    name: str
    command: list[str]
    restart: bool = True  # False: its exit stops everything
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_exits: int = 0  # exits in a row of a child that had not run for ``stable_after``
    restart_at: float | None = None  # when a restart is due (during its backoff)
    starts: int = 0
    cleaned: bool = False  # its exit was handled: its process group was killed


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class Supervisor:
    """Starts children, restarts the ones that exit (with a backoff), stops them all.

    ``poll`` does one round of checks and restarts; ``run`` polls until ``stopping`` is set or
    a child that is not restarted exits; ``stop`` stops every child: SIGTERM to the main
    process only (a Celery worker then shuts its own pool down; signalling the group would kill
    the pool under it, and it would respawn it), then SIGKILL to the group after the timeout.
    """

    children: list[Child]
    log: Callable[[str], None]
    backoff_start: float = 1.0
    backoff_max: float = 30.0
    stable_after: float = 60.0
    stop_timeout: float = 15.0
    exit_code: int | None = field(default=None, init=False)

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(child.command, env=child.env, start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_at = None
        child.starts += 1
        child.cleaned = False

    def backoff(self, quick_exits: int) -> float:
        return min(self.backoff_max, self.backoff_start * 2 ** max(0, quick_exits - 1))

    def poll(self) -> int | None:
        """Handle exits and due restarts; the stack's exit code once it must stop, else None."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self.log(f"Starting {child.name} again (start {child.starts + 1}).")
                    self._spawn(child)
                continue
            process = child.process
            if process is None or child.cleaned or process.poll() is None:
                continue
            self._kill_group(child)
            how = describe_exit(process.returncode)
            if not child.restart:
                self.log(f"{child.name} exited ({how}); stopping everything.")
                self.exit_code = 1
                return self.exit_code
            ran = now - child.started_at
            child.quick_exits = 1 if ran >= self.stable_after else child.quick_exits + 1
            delay = self.backoff(child.quick_exits)
            child.restart_at = now + delay
            self.log(
                f"{child.name} exited unexpectedly ({how}) after {ran:.0f} s; "
                f"restarting it in {delay:g} s."
            )
        return None

    def run(self, stopping: Callable[[], bool], tick: float = 0.2) -> int:
        while not stopping():
            code = self.poll()
            if code is not None:
                return code
            time.sleep(tick)  # a signal interrupts it at once (and sets ``stopping``)
        return 0

    def stop(self) -> None:
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                child.process.terminate()
        deadline = time.monotonic() + self.stop_timeout
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"{child.name} did not stop in {self.stop_timeout:g} s; killing it.")
        for child in self.children:
            if child.process is not None and not child.cleaned:
                self._kill_group(child)

    @staticmethod
    def _kill_group(child: Child) -> None:
        """SIGKILL what is left of the child's process group (a worker's pool children, or
        all of it), then reap its main process. Once per start: the group id is the main
        process's id, which the system may give to another process later."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()
        child.cleaned = True


def on_stop_signals() -> Callable[[], bool]:
    """Install SIGINT and SIGTERM handlers; returns "has one arrived?"."""
    stopping = {"flag": False}

    def stop(signum, frame):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return lambda: stopping["flag"]


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
        web = [python, manage, "runserver", f"{host}:{port}"]
        if not options["reload"]:
            web.append("--noreload")
        supervisor = Supervisor(
            children=[
                Child("web", web, restart=False),
                Child("worker", worker_command(python)),
                Child(
                    "beat",
                    beat_command(python, str(Path(settings.VAR_DIR) / "celerybeat-schedule")),
                ),
            ],
            log=lambda line: self.stderr.write(line),
        )
        # Handlers first: a Ctrl-C that arrives while the children start must not be lost (a
        # background job of a script starts with SIGINT ignored until we install ours).
        stopping = on_stop_signals()
        supervisor.start()
        exit_code = 0
        try:
            # Print the banner once the web server answers, so the worker's start-up output
            # does not scroll it away; children are supervised meanwhile.
            if self._wait_for_port(host, port, supervisor, stopping):
                self._print_banner(host, port)
            exit_code = supervisor.exit_code or supervisor.run(stopping)
        finally:
            self.stdout.write("\nStopping web, worker and beat...")
            supervisor.stop()
            self._stop_database()
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
        self,
        host: str,
        port: int,
        supervisor: Supervisor,
        stopping: Callable[[], bool],
        timeout: float = 60,
    ) -> bool:
        """Whether the web server answers; waits a moment more for the other banners."""
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stopping():
            if supervisor.poll() is not None:
                return False
            with socket.socket() as s:
                if s.connect_ex((host, port)) == 0:
                    # Let the worker and beat print their banners first (unless stopping).
                    settle = time.monotonic() + 1.5
                    while time.monotonic() < settle and not stopping():
                        time.sleep(0.1)
                    return True
            time.sleep(0.3)
        return False

    def _stop_database(self) -> None:
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
