"""``max_in_flight`` holds however many dispatchers claim at once, and a lease frees its room
when the attempt succeeds, fails, or expires (the reaper).

Claimers here are threads, each with its own PostgreSQL connection (Django opens one per
thread), so the claims really run concurrently in the database; every assertion reads the
database's state (how many rows are leased per endpoint), not what the claimers returned.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from bxos.common.services import model_update
from tests.webhooks.receiver import Answer
from webhooks import dispatch, services
from webhooks.choices import DeliveryStatus
from webhooks.models import WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = 20


def endpoint(world, actor, url, name, max_in_flight):
    created, _ = services.webhook_endpoint_create(
        actor=actor,
        district=world.district,
        name=name,
        url=url,
        event_types=["student.updated"],
        max_in_flight=max_in_flight,
    )
    return created


def events(world, actor, count=EVENTS):
    for n in range(count):
        model_update(instance=world.a1, actor=actor, data={"preferred_name": f"Name {n}"})


def leased(ep) -> int:
    return WebhookDelivery.objects.filter(endpoint=ep, status=DeliveryStatus.LEASED).count()


def in_thread(target, *args):
    """Run ``target`` in a thread with its own database connection; return (thread, box)."""
    box: dict = {}

    def run():
        try:
            box["result"] = target(*args)
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_a_claim_in_progress_keeps_other_claimers_off_its_endpoint(north, system, loopback):
    """The race of the counting claim, made certain: claimer A has leased an endpoint's room in
    a transaction it has not committed; claimer B, on another connection, must not lease more
    (a count would not see A's rows yet). After A commits, B sees them and the room is full."""
    busy = endpoint(north, system, "http://127.0.0.1:9/busy", "busy", max_in_flight=3)
    events(north, system)
    assert WebhookDelivery.objects.filter(endpoint=busy, status="pending").count() == EVENTS
    # A claim of 3 picks (and row-locks) 12 candidates, so B finds unlocked ones to lease.

    claimed = threading.Event()
    release = threading.Event()

    def claimer_a():
        with transaction.atomic():
            _lease, ids = dispatch.claim(3)
            claimed.set()
            assert release.wait(30)
        return ids

    thread_a, box_a = in_thread(claimer_a)
    assert claimed.wait(30), box_a
    # B claims while A's leases are uncommitted.
    thread_b, box_b = in_thread(lambda: dispatch.claim(3)[1])
    thread_b.join(30)
    assert not thread_b.is_alive() and "error" not in box_b, box_b
    assert box_b["result"] == []
    release.set()
    thread_a.join(30)
    assert "error" not in box_a, box_a
    assert len(box_a["result"]) == 3
    assert leased(busy) == 3
    # Committed now: a new claim sees the three and leases nothing more.
    assert dispatch.claim(50)[1] == []
    assert leased(busy) == 3


def test_many_claimers_at_once_never_lease_more_than_the_limit(north, system, loopback):
    """Six claimers start together (a barrier) for several rounds; between rounds some leases
    end, as attempts do. After every round each endpoint has at most its max_in_flight leased;
    at the end, an uncontended claim fills the room again (nothing was left stuck)."""
    small = endpoint(north, system, "http://127.0.0.1:9/small", "small", max_in_flight=2)
    large = endpoint(north, system, "http://127.0.0.1:9/large", "large", max_in_flight=5)
    events(north, system, count=40)
    limits = {small.pk: 2, large.pk: 5}
    claimers, rounds = 6, 8
    # The claimers and this thread: start a round together, then wait until every claim of
    # the round has committed, then until this thread has checked and freed some room.
    barrier = threading.Barrier(claimers + 1)
    errors: list[BaseException] = []

    def claimer():
        try:
            for _ in range(rounds):
                barrier.wait(30)
                dispatch.claim(3)
                barrier.wait(30)
                barrier.wait(30)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    def counts() -> dict[int, int]:
        return {ep.pk: leased(ep) for ep in (small, large)}

    threads = [threading.Thread(target=claimer, daemon=True) for _ in range(claimers)]
    for thread in threads:
        thread.start()
    seen = []
    try:
        for _ in range(rounds):
            barrier.wait(30)
            barrier.wait(30)
            seen.append(counts())
            for ep in (small, large):  # two leases of each end, as finished attempts do
                done = list(
                    WebhookDelivery.objects.filter(endpoint=ep, status=DeliveryStatus.LEASED)
                    .order_by("pk")
                    .values_list("pk", flat=True)[:2]
                )
                WebhookDelivery.objects.filter(pk__in=done).update(
                    status=DeliveryStatus.SUCCEEDED, leased_by="", lease_expires_at=None
                )
            barrier.wait(30)
    finally:
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    assert len(seen) == rounds
    for round_counts in seen:
        assert all(round_counts[pk] <= limits[pk] for pk in limits), seen
    assert any(round_counts[large.pk] > 0 for round_counts in seen), seen
    for _ in range(3):  # uncontended, a few small claims fill the room exactly
        dispatch.claim(3)
    assert counts() == limits


def test_a_lease_frees_its_room_on_success_failure_and_expiry(north, system, receiver):
    ep = endpoint(north, system, receiver.url, "released", max_in_flight=2)
    events(north, system, count=8)

    def room_taken_again():
        _lease, ids = dispatch.claim(50)
        assert len(ids) == 2 and leased(ep) == 2
        return ids

    # Success: the two leased rows succeed and are no longer leased.
    receiver.default = Answer(status=204, body=b"")
    assert dispatch.dispatch_once(50) == 2
    assert leased(ep) == 0
    assert WebhookDelivery.objects.filter(endpoint=ep, status="succeeded").count() == 2

    # Failure: pending again with a retry time, not leased.
    receiver.default = Answer(status=500)
    assert dispatch.dispatch_once(50) == 2
    assert leased(ep) == 0
    failed = WebhookDelivery.objects.filter(endpoint=ep, status="pending", attempts=1)
    assert failed.count() == 2 and all(d.next_attempt_at > timezone.now() for d in failed)

    # Expiry: a worker that died holds two leases; the room is full until the reaper runs.
    ids = room_taken_again()
    assert dispatch.claim(50)[1] == []
    WebhookDelivery.objects.filter(pk__in=ids).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert dispatch.reap_expired_leases() == 2
    assert leased(ep) == 0
    room_taken_again()
