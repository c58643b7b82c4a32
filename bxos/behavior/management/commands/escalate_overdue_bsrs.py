"""Escalate overdue behavior support requests now (the beat task does it every 15 minutes)."""

from bxos.behavior import services
from bxos.common.management.base import ActorCommand


class Command(ActorCommand):
    help = "Escalate open behavior support requests that are past their due time."

    def act(self, *args, actor, **options):
        count = services.bsr_escalate_overdue(actor=actor)
        self.stdout.write(f"Escalated {count} overdue request(s).")
