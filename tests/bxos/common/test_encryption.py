"""Encrypted fields are ciphertext at rest, plain in Python, and survive key rotation."""

from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from bxos.behavior.models import Intervention
from bxos.common.fields import _multifernet


def _raw(pk):
    with connection.cursor() as c:
        c.execute(
            "SELECT confidential_notes, change_version FROM behavior_intervention WHERE id=%s", [pk]
        )
        return c.fetchone()


def test_ciphertext_at_rest(north):
    iv = Intervention.objects.filter(district=north.district).first()
    raw, _ = _raw(iv.pk)
    assert raw.startswith("fernet:") and "Family situation" not in raw
    assert Intervention.objects.get(pk=iv.pk).confidential_notes.startswith("Family situation")


def test_rotation_reencrypts_with_the_new_key_and_keeps_versions(north, settings):
    iv = Intervention.objects.filter(district=north.district).first()
    old_raw, old_version = _raw(iv.pk)
    old_key = settings.ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [new_key, old_key]
    call_command("rotate_encryption_keys", "--quiet")
    new_raw, new_version = _raw(iv.pk)
    assert new_raw != old_raw
    assert new_version == old_version  # rotation is not a data change for feeds
    # Only the new key is needed now.
    settings.ENCRYPTION_KEYS = [new_key]
    _multifernet.cache_clear()
    assert Intervention.objects.get(pk=iv.pk).confidential_notes.startswith("Family situation")
    # And the old key alone can no longer read it.
    settings.ENCRYPTION_KEYS = [old_key]
    try:
        Intervention.objects.get(pk=iv.pk)
    except ValueError as exc:
        assert "BXOS_ENCRYPTION_KEYS" in str(exc)
    else:
        raise AssertionError("old key still decrypts after rotation")
