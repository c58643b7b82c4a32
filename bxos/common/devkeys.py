"""A development-only encryption key kept under var/, so `make run` needs no configuration.

Production sets BXOS_ENCRYPTION_KEYS; settings refuse to start there without it.
This module must not import Django: settings import it.
"""

from __future__ import annotations

import os
from pathlib import Path


def development_encryption_key(var_dir: Path) -> str:
    from cryptography.fernet import Fernet

    var_dir.mkdir(parents=True, exist_ok=True)
    path = var_dir / "dev-encryption.key"
    if not path.exists():
        # O_EXCL: when web, worker and beat start together only one of them writes the key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(Fernet.generate_key().decode())
    return path.read_text().strip()
