"""JSON for API responses, rendered with orjson (the hottest path of the API, see
docs/benchmarks.md, B3), byte-for-byte what DRF's encoder would give for the same data."""

from __future__ import annotations

import orjson
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

_fallback = JSONEncoder()
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def _default(value):
    # Decimals as numbers, lazy strings, timedeltas, querysets...: whatever DRF's encoder does.
    return _fallback.default(value)


class OrjsonRenderer(JSONRenderer):
    """DRF's JSON renderer on orjson: UTC datetimes end in "Z" as DRF writes them."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        try:
            return orjson.dumps(data, default=_default, option=_OPTIONS)
        except TypeError:
            # What orjson refuses (integers beyond 64 bits, echoed from a bad parameter, say)
            # the standard encoder still writes: never a 500 for rendering.
            return super().render(data, accepted_media_type, renderer_context)


class ApiContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, with the common case answered without parsing: an ``Accept`` of
    ``*/*`` (or none, which DRF reads as ``*/*``) or exactly the first renderer's media type
    selects that renderer, as DRF's own matching would (docs/benchmarks.md, B3)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        if renderers and not format_suffix:
            first = renderers[0]
            accept = request.META.get("HTTP_ACCEPT", "*/*")
            if accept in ("*/*", first.media_type) and (
                self.settings.URL_FORMAT_OVERRIDE not in request.query_params
            ):
                return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)
