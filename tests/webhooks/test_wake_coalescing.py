"""After-commit wake-ups are coalesced on a Redis broker: a commit queues one only when none is
waiting, and the worker clears the flag before it claims, so no commit is left without a claim
still to come. Real Redis, real commits, the real Celery publish."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.db import transaction

from bxos.common.audit import system_actor
from bxos.common.services import model_update
from tests.conftest import skip_or_fail
from tests.webhooks.test_reliability import WAKE_UP, RedisServer, publishing_to
from webhooks import outbox, services
from webhooks.choices import DeliveryStatus
from webhooks.models import WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_broker(tmp_path: Path, settings):
    binary = shutil.which("redis-server")
    if binary is None:
        skip_or_fail("no redis-server (apt-get install redis-server)")
    server = RedisServer(binary, tmp_path)
    server.start()
    try:
        with publishing_to(server.url):
            yield server
    finally:
        server.stop()


def commit_a_change(world, name: str) -> None:
    with transaction.atomic():
        model_update(instance=world.a1, actor=system_actor(), data={"preferred_name": name})


def test_commits_queue_one_wake_up_until_a_worker_takes_it(north, redis_broker, loopback):
    services.webhook_endpoint_create(
        actor=system_actor(),
        district=north.district,
        name="Lake",
        url="http://127.0.0.1:9/hook",
        event_types=["student.updated"],
    )
    for n in range(5):
        commit_a_change(north, f"Name {n}")
    assert WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING).count() == 5
    # Five commits, one wake-up: its claim is still to come and will see all five.
    assert redis_broker.queued(WAKE_UP) == 1
    assert redis_broker.client().ttl(outbox.WAKE_FLAG) > 0

    # A worker clears the flag before it claims: the next commit queues a new wake-up.
    outbox.wake_flag_clear()
    commit_a_change(north, "After the claim")
    assert redis_broker.queued(WAKE_UP) == 2

    # A wake-up that could not be published holds nothing back.
    redis_broker.client().delete(outbox.WAKE_FLAG)
    redis_broker.stop()
    commit_a_change(north, "Broker down")  # logged, not raised: the sweep covers it
    redis_broker.start()
    assert not redis_broker.client().exists(outbox.WAKE_FLAG)
    commit_a_change(north, "Broker back")
    assert redis_broker.queued(WAKE_UP) == 1  # the restarted Redis lost the older two
