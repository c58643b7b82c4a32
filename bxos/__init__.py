"""BX-OS Integration Hub: the project package and the school-data core."""

from bxos.celery import app as celery_app

__all__ = ["celery_app"]
