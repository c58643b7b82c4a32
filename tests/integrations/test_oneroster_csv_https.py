"""A OneRoster CSV zip fetched from an HTTPS URL, from a server on 127.0.0.1 whose certificate a
private CA made in the test issued (tests/integrations/peers/https_files.py).

The download goes through the outbound client with certificate verification on: without the
district's CA the run fails and says why; with the CA pasted in ``url_ca_certificate`` it
succeeds. Verification is never switched off.
"""

from __future__ import annotations

import pytest

from bxos.schools.models import Student
from integrations import services
from integrations.choices import RunStatus
from integrations.models import Integration, SyncDefinition
from integrations.sample import build_roster, write_zip
from tests.integrations.peers.https_files import HttpsFileServer, make_ca_and_server_cert

pytestmark = pytest.mark.usefixtures("loopback")

SOURCE = "sis-https"
ENTITIES = ["school", "academic_session", "staff", "student", "enrollment"]
PATH = "/exports/oneroster.zip"


@pytest.fixture
def pki():
    return make_ca_and_server_cert()


@pytest.fixture
def server(pki, tmp_path):
    zip_bytes = write_zip(tmp_path / "roster.zip", build_roster(students=12)).read_bytes()
    with HttpsFileServer(pki, {PATH: zip_bytes}, token="district-token") as running:
        yield running


def https_definition(world, actor, server, **params) -> SyncDefinition:
    integration = services.integration_create(
        district=world.district,
        name="SIS exports (HTTPS)",
        connector_type="oneroster_csv",
        source_system=SOURCE,
        params={
            "source": "url",
            "url": server.url + PATH,
            "url_token": "district-token",
            **params,
        },
        actor=actor,
    )
    return services.definition_save(
        definition=SyncDefinition(integration=integration, name="Nightly", entities=ENTITIES),
        actor=actor,
    )


def execute(definition, actor):
    run = services.run_start(definition=definition, actor=actor)
    return services.run_execute(run=run, actor=actor)


def students(world):
    return Student.objects.filter(district=world.district, source_system=SOURCE)


def test_without_the_districts_ca_the_certificate_is_refused(north, system, server):
    definition = https_definition(north, system, server)
    run = execute(definition, system)
    assert run.status == RunStatus.FAILED
    assert server.url + PATH in run.message
    assert "CERTIFICATE_VERIFY_FAILED" in run.message or "certificate verify" in run.message
    assert not students(north).exists()
    # No request got through the TLS handshake: the token was never sent.
    assert server.requests == []
    ok, message = services.integration_test(integration=definition.integration, actor=system)
    assert not ok and "certificate" in message.lower()


def test_with_the_districts_ca_the_zip_is_fetched_and_synced(north, system, server, pki):
    definition = https_definition(north, system, server)
    integration = services.integration_update(
        integration=Integration.objects.get(pk=definition.integration_id),
        actor=system,
        data={},
        params={"url_ca_certificate": pki.ca_pem},
    )
    assert integration.params["url_ca_certificate"].startswith("-----BEGIN CERTIFICATE-----")
    ok, message = services.integration_test(integration=integration, actor=system)
    assert ok, message
    assert "OneRoster 1.2" in message

    run = execute(definition, system)
    assert run.status == RunStatus.SUCCEEDED, run.message
    assert students(north).count() == 12
    assert server.requests[-1] == (PATH, "Bearer district-token")

    # A wrong token is rejected credentials, not a crash.
    services.integration_update(
        integration=integration, actor=system, data={}, params={"url_token": "stale"}
    )
    refused = execute(definition, system)
    assert refused.status == RunStatus.FAILED
    assert refused.message.startswith("credentials rejected") and "401" in refused.message


def test_a_certificate_parameter_that_is_not_one_is_named(north, system, server):
    definition = https_definition(
        north, system, server, url_ca_certificate="this is not a certificate"
    )
    run = execute(definition, system)
    assert run.status == RunStatus.FAILED
    assert "url_ca_certificate is not a PEM certificate" in run.message
    integration = definition.integration
    services.integration_update(
        integration=integration,
        actor=system,
        data={},
        params={
            "url_ca_certificate": "-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----"
        },
    )
    run = execute(definition, system)
    assert run.status == RunStatus.FAILED
    assert "url_ca_certificate could not be read as a certificate" in run.message
    assert server.requests == []
