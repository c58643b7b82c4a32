"""Endpoint owners are told by email, through a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from django.utils import timezone

from tests.webhooks.receiver import Answer
from tests.webhooks.test_delivery import make_endpoint, rename
from webhooks import dispatch
from webhooks.models import WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp(settings):
    inbox = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = False
    yield inbox
    controller.stop()


def wait_for(inbox, count, timeout=10.0):
    deadline = time.monotonic() + timeout
    while len(inbox.messages) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return inbox.messages


def test_owner_is_emailed_once_at_exhaustion_and_at_disable(north, system, receiver, smtp):
    make_endpoint(north, system, receiver.url, retry_schedule=[5])  # two attempts
    receiver.default = Answer(status=500)
    rename(north.a1, system, "First")
    rename(north.a1, system, "Second")
    for _ in range(2):
        dispatch.dispatch_once()
        WebhookDelivery.objects.update(next_attempt_at=timezone.now())
    (to, message), *rest = wait_for(smtp, 1)
    assert to == ["ops@district.example"]
    assert "failed for good" in message["Subject"]
    assert "can be replayed" in message.get_payload()
    assert rest == []  # the second exhausted delivery does not send another

    receiver.answers.append(Answer(status=410))
    rename(north.a1, system, "Third")
    dispatch.dispatch_once()
    messages = wait_for(smtp, 2)
    assert "disabled" in messages[1][1]["Subject"]
    assert "410 Gone" in messages[1][1].get_payload()
