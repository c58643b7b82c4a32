"""`manage.py seed_demo`: load the demo districts (see bxos.schools.demo)."""

from __future__ import annotations

from django.core.management.base import CommandError

from bxos.common.management.base import ActorCommand
from bxos.schools import demo


class Command(ActorCommand):
    help = (
        "Create the demo districts 'lincoln' (about 1,500 students) and 'riverside' (about 60), "
        "with demo logins for every role. Does nothing if they exist, unless --reset."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--students",
            type=int,
            default=demo.DEFAULT_STUDENTS,
            help="Students in 'lincoln'; staff, sections, attendance and referrals follow "
            f"(default {demo.DEFAULT_STUDENTS}).",
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=demo.DEFAULT_SEED,
            help=f"Random seed: the same seed gives the same data (default {demo.DEFAULT_SEED}).",
        )
        parser.add_argument(
            "--password",
            default=demo.DEMO_PASSWORD,
            help=f"Password of every demo login (default {demo.DEMO_PASSWORD!r}).",
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            help="Delete both demo districts (rows, logins) first, then seed them again.",
        )
        parser.add_argument("--quiet", action="store_true", help="No progress bars.")

    def act(self, *args, actor, **options):
        if options["students"] < demo.MIN_STUDENTS:
            raise CommandError(f"--students must be at least {demo.MIN_STUDENTS}")
        report = demo.seed_demo(
            actor=actor,
            students=options["students"],
            seed=options["seed"],
            password=options["password"],
            reset=options["reset"],
            progress=not options["quiet"] and options["verbosity"] > 0,
        )
        self._print(report, verbosity=options["verbosity"])

    def _print(self, report: demo.SeedReport, *, verbosity: int) -> None:
        out = self.stdout.write
        if verbosity == 0:
            return
        for code in report.present:
            out(
                f"Demo district {code!r} is already present; nothing changed (--reset recreates it)"
            )
        if report.deleted:
            out(f"Deleted the old demo data: {sum(report.deleted.values()):,} rows.")
        if report.created:
            out(
                f"Seeded {', '.join(report.created)}: {report.rows:,} rows in "
                f"{report.seconds:.1f} s."
            )
            if verbosity > 1:
                for label, count in sorted(report.counts.items()):
                    out(f"  {label:<32} {count:>10,}")
        password = report.password
        if report.present:  # those logins keep the password they were seeded with
            password = f"as set when seeded, by default {demo.DEMO_PASSWORD}"
        out(f"\nDemo logins (password for all: {password}):")
        for username, text, exists in report.logins:
            note = "" if exists else "  (missing)"
            if username == "admin" and report.created and not report.admin_created and exists:
                note = "  (existing account: password unchanged)"
            out(f"  {username:<18} {text}{note}")
