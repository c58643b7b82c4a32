"""Task base: every task runs as an actor, so its writes are audited under a name.

Tasks load rows by id and call services; retry timing that matters to the product lives in rows,
not in Celery countdowns. A task runs as the named system actor unless it is given
``actor_id`` (a user who queued it from a page).
"""

from __future__ import annotations

from celery import Task

from bxos.common.audit import acting_as, system_actor


class ActorTask(Task):
    """Runs the task body inside ``acting_as(actor)``."""

    def __call__(self, *args, **kwargs):
        actor_id = kwargs.pop("actor_id", None)
        if actor_id is not None:
            from bxos.common.models import User

            actor = User.objects.get(pk=actor_id)
        else:
            actor = system_actor()
        with acting_as(actor):
            return super().__call__(*args, **kwargs)
