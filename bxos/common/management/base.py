"""Base for management commands that write: they act as the system actor (or --actor)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from bxos.common.audit import acting_as, system_actor


class ActorCommand(BaseCommand):
    """Runs ``act()`` inside ``acting_as(actor)`` so every audit entry names who ran it."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.add_argument(
            "--actor",
            default=None,
            help="Username to record in the audit log (default: the system actor).",
        )
        return parser

    def handle(self, *args, **options):
        actor = self._resolve_actor(options.pop("actor", None))
        with acting_as(actor):
            return self.act(*args, actor=actor, **options)

    def act(self, *args, actor, **options):
        raise NotImplementedError

    def _resolve_actor(self, username):
        if not username:
            return system_actor()
        from bxos.common.models import User

        try:
            return User.objects.get(username=username)
        except User.DoesNotExist as exc:
            raise CommandError(f"--actor: no user named {username!r}") from exc
