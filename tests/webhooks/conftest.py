"""Webhook tests reach receivers they start on 127.0.0.1, so loopback is allowed here."""

from __future__ import annotations

import pytest

from tests.webhooks.receiver import Receiver


@pytest.fixture
def loopback(settings):
    settings.OUTBOUND_HTTP = {**settings.OUTBOUND_HTTP, "ALLOW_LOOPBACK": True}
    return settings


@pytest.fixture
def receiver(loopback):
    with Receiver() as r:
        yield r
