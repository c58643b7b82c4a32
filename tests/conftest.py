"""Shared fixtures: two tenants ("north" and "south"), and service helpers.

Building a district takes a second or two, so the two worlds are built once per session and
committed; each ordinary test runs inside a transaction that rolls back, and gets fresh copies
of the world's objects (so in-memory edits never leak between tests). pytest-django runs
transactional tests after the others; their database flush removes the shared worlds, so those
tests build their own.
"""

from __future__ import annotations

import copy
import os
import socket

import pytest
from django.db import models

from tests.factories import build_district


def pytest_configure(config):
    from django.conf import settings

    # Each process writes its API request counts every few seconds in production; tests read
    # the table right after a request, and a count must not outlive the test that made it.
    settings.API = {**settings.API, "MONITORING_FLUSH_SECONDS": 0}


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


@pytest.fixture(scope="session")
def _shared_worlds(django_db_setup, django_db_blocker):
    # Session scope: pytest sets it up before any function-scoped fixture of the first test that
    # asks for a world (the world fixtures name it as a parameter), so it is built outside that
    # test's transaction and committed. Not autouse: a run of tests that need no database must
    # not build worlds (pytest-django would then point at the development database).
    with django_db_blocker.unblock():
        return {"north": build_district("north"), "south": build_district("south")}


def _fresh(value):
    if isinstance(value, models.Model):
        return type(value)._base_manager.get(pk=value.pk)
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return copy.copy(value)


def _world(request, shared_worlds, name):
    from bxos.schools.models import District

    shared = shared_worlds[name]
    marker = request.node.get_closest_marker("django_db")
    if marker and marker.kwargs.get("transaction"):
        request.getfixturevalue("transactional_db")
        if not District.objects.filter(pk=shared.district.pk).exists():
            return build_district(name)  # an earlier transactional test flushed the shared one
    else:
        request.getfixturevalue("db")
    world = copy.copy(shared)
    for attr, value in vars(shared).items():
        setattr(world, attr, _fresh(value))
    return world


@pytest.fixture
def north(request, _shared_worlds):
    return _world(request, _shared_worlds, "north")


@pytest.fixture
def south(request, _shared_worlds):
    return _world(request, _shared_worlds, "south")


@pytest.fixture
def system(db):
    from bxos.common.audit import system_actor

    return system_actor()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    # Tests that reach the database only through the world fixtures still count as database
    # tests, so pytest-django orders them before the transactional ones (which flush).
    for item in items:
        uses_world = {"north", "south", "system"} & set(getattr(item, "fixturenames", ()))
        if uses_world and item.get_closest_marker("django_db") is None:
            item.add_marker(pytest.mark.django_db)
