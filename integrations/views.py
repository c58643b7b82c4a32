"""The integration engine's one non-admin view: the signed inbound endpoint of event-driven syncs.

A source system (an SIS that sends enrollment changes as they happen) POSTs to
``/integrations/inbound/<definition id>/`` with Standard Webhooks headers, signed with the secret
shown once when the definition became event-driven. No session, no CSRF token: the signature is
the authentication. A verified event queues an incremental run (or joins the one waiting).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from bxos.common.audit import system_actor
from integrations import services
from integrations.choices import ScheduleKind
from integrations.models import SyncDefinition

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@csrf_exempt
@require_POST
def inbound(request: HttpRequest, definition_id: int) -> JsonResponse:
    """202 ``{"run": id or null}`` for a verified event; 400 for a request without the
    signature headers, 401 for a signature that does not verify (or is too old), 404 for a
    definition that does not exist or is not event-driven."""
    definition = (
        SyncDefinition.objects.select_related("integration")
        .filter(pk=definition_id, schedule_kind=ScheduleKind.EVENT)
        .first()
    )
    if definition is None:
        return _error(404, f"no event-driven sync definition with id {definition_id}")
    missing = [name for name in SIGNATURE_HEADERS if not request.headers.get(name)]
    if missing:
        return _error(400, f"missing header(s): {', '.join(missing)} (Standard Webhooks signing)")
    try:
        services.inbound_verify(definition=definition, headers=request.headers, body=request.body)
    except ValidationError as exc:
        return _error(401, "; ".join(exc.messages))
    run = services.inbound_event(definition=definition, actor=system_actor())
    return JsonResponse({"run": run.pk if run is not None else None}, status=202)
