"""Integration tests talk to protocol peers they start on 127.0.0.1, so loopback is allowed."""

from __future__ import annotations

import pytest

from tests.integrations.peers.edfi import EdFiPeer


@pytest.fixture
def loopback(settings):
    settings.OUTBOUND_HTTP = {**settings.OUTBOUND_HTTP, "ALLOW_LOOPBACK": True}
    return settings


@pytest.fixture
def media(settings, tmp_path):
    """Uploaded files (sync zips) under the test's own temporary folder."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path


@pytest.fixture
def peer():
    """The Ed-Fi test server on 127.0.0.1, fed from its fixture data. Tests of the OneRoster
    peer define their own ``peer``."""
    with EdFiPeer() as server:
        yield server
