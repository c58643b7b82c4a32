"""Encrypted model fields: secrets and confidential notes encrypted at rest with MultiFernet.

Keys come from settings.ENCRYPTION_KEYS (env BXOS_ENCRYPTION_KEYS, newest first). Values are
decrypted with any listed key and written with the first, so a rotation is: put a new key first,
run `manage.py rotate_encryption_keys`, then drop the old key.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models

PREFIX = "fernet:"


@lru_cache(maxsize=4)
def _multifernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])


def multifernet() -> MultiFernet:
    return _multifernet(tuple(settings.ENCRYPTION_KEYS))


def encrypt(value: str) -> str:
    return PREFIX + multifernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    if not token.startswith(PREFIX):
        raise ValueError("value is not an encrypted token")
    try:
        return multifernet().decrypt(token[len(PREFIX) :].encode()).decode()
    except InvalidToken as exc:
        raise ValueError("cannot decrypt: none of BXOS_ENCRYPTION_KEYS matches this value") from exc


def rotate(token: str) -> str:
    return PREFIX + multifernet().rotate(token[len(PREFIX) :].encode()).decode()


class EncryptedTextField(models.TextField):
    """A text field stored as a Fernet token; Python sees the plain text.

    Not searchable or sortable by content, by design. Never list it in admin list views.
    """

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(value)


def encrypted_fields() -> list[tuple[type, list[str]]]:
    """Every (model, [field names]) with an encrypted field, for the rotation command."""
    from django.apps import apps

    found = []
    for model in apps.get_models():
        names = [f.name for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)]
        if names:
            found.append((model, names))
    return found
