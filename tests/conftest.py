"""Shared fixtures: two tenants built once per test session block, and service helpers.

The worlds are built inside each test's transaction (cheap: a few hundred rows), so every test
starts from the same known state and may write freely.
"""

from __future__ import annotations

import os
import socket

import pytest

from tests.factories import build_district


def require_services() -> bool:
    """REQUIRE_SERVICES=1 (CI) turns 'service missing: skip' into a failure."""
    return os.environ.get("REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    if require_services():
        pytest.fail(f"{reason} (REQUIRE_SERVICES=1: a needed service is missing)")
    pytest.skip(reason)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture
def north(db):
    return build_district("north")


@pytest.fixture
def south(db):
    return build_district("south")


@pytest.fixture
def system(db):
    from bxos.common.audit import system_actor

    return system_actor()
