"""The HTTP layer every connector to a source system's REST API shares.

A source (a OneRoster 1.2 server, an Ed-Fi ODS/API) is reached with OAuth2 client credentials
and answers JSON. :class:`SourceHttp` fetches and caches the bearer token in the connector's
persisted ``state`` (so runs minutes apart reuse it), and retries what is worth retrying:

- 429 and 5xx answers and network failures get exponential backoff with full jitter
  (``random.uniform(0, min(cap, base * 2**n))``: retries of many workers spread out instead of
  hitting a recovering server together), except that a ``Retry-After`` the source sends is
  obeyed (capped at ``backoff_cap``). After ``max_attempts`` the error says which URL failed,
  with what, how many times.
- A 401 on a data call means the cached token was revoked or expired early: the token is
  fetched again once and the call repeated; a second 401 means the credentials no longer work.
- Other 4xx are the source refusing the request itself (a bad filter, an unknown record): no
  retry, an error naming the URL, the status and the start of the body.

Every request goes through ``bxos.common.outbound.outbound_client`` (the SSRF guard). That client
puts no cap on the size of a body read through it (``MAX_RESPONSE_BYTES`` applies to ``send()``
only), and roster pages are megabytes, so bodies are streamed here and cut at
:attr:`SourceHttp.max_page_bytes`; gzip is accepted because a page of JSON shrinks tenfold, and
the cap counts decoded bytes. Its overall deadline per request (``OUTBOUND_HTTP
["TOTAL_TIMEOUT"]``) still applies on top of ``page_timeout``: a page must arrive within the
smaller of the two.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx

from bxos.common.outbound import OutboundGuardError, body_preview, outbound_client
from integrations.connectors.base import ConnectorError, CredentialsRejected

#: A cached token is refreshed when it has less than this many seconds left, so a request never
#: leaves with a token that expires on its way.
TOKEN_REFRESH_MARGIN = 60.0
#: Used when a token endpoint omits ``expires_in`` (RFC 6749 only recommends it): short, so a
#: token of unknown lifetime is not trusted for long.
DEFAULT_TOKEN_LIFETIME = 300.0
_PREVIEW = 300


class HttpStatusError(ConnectorError):
    """A source answered a status the caller cannot use; ``status`` and ``url`` say which."""

    def __init__(self, message: str, *, url: str, status: int, kind: str = "protocol") -> None:
        super().__init__(message, kind=kind)
        self.url = url
        self.status = status


class SourceHttp:
    """OAuth2 client-credentials JSON client for a source system, with retries."""

    #: Largest body read (decoded); larger answers fail the call instead of filling memory.
    max_page_bytes: ClassVar[int] = 64 * 1024 * 1024

    def __init__(
        self,
        *,
        base_url: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        state: dict,
        log: Callable[[str], None],
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        page_timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope or None
        self.state = state
        self.log = log
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.sleep = sleep
        self._client = outbound_client(
            timeout=httpx.Timeout(page_timeout, connect=min(10.0, page_timeout)),
            headers={"Accept": "application/json", "Accept-Encoding": "gzip"},
        )
        # A token cached for other credentials (the admin changed the client id, the token URL
        # or the scope) must not be used: it would hide that the new ones do not work.
        self._fingerprint = hashlib.sha256(
            f"{token_url}\n{client_id}\n{self.scope or ''}".encode()
        ).hexdigest()[:16]

    # --- token ---------------------------------------------------------------------------------

    def token(self) -> str:
        """The bearer token: the cached one while it has a minute left, else a fresh one."""
        cached = self.state.get("token")
        expires_at = self.state.get("token_expires_at")
        if (
            cached
            and self.state.get("token_for") == self._fingerprint
            and isinstance(expires_at, int | float)
            and expires_at - time.time() >= TOKEN_REFRESH_MARGIN
        ):
            return str(cached)
        return self._fetch_token()

    def invalidate_token(self) -> None:
        """Forget the cached token: the next call fetches a new one."""
        for key in ("token", "token_expires_at", "token_for"):
            self.state.pop(key, None)

    def token_seconds_left(self) -> int | None:
        expires_at = self.state.get("token_expires_at")
        if not isinstance(expires_at, int | float):
            return None
        return max(0, round(expires_at - time.time()))

    def _fetch_token(self) -> str:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        url = self.token_url
        failures = 0
        while True:
            # Client authentication by HTTP Basic (RFC 6749 2.3.1), the form carries the grant.
            response, failure = self._attempt(
                "POST", url, form=form, auth=(self.client_id, self.client_secret)
            )
            if response is not None and 200 <= response.status_code < 300:
                return self._store_token(response)
            if response is not None and response.status_code in (400, 401):
                self.invalidate_token()
                raise CredentialsRejected(
                    f"the token endpoint {url} answered {response.status_code}"
                    f"{_oauth_error(response)}"
                )
            if response is not None and response.status_code != 429 and response.status_code < 500:
                raise HttpStatusError(
                    f"the token endpoint {url} answered {response.status_code}: "
                    f"{_preview(response)}",
                    url=url,
                    status=response.status_code,
                )
            failures += 1
            self._wait_or_give_up("POST", url, response, failure, failures)

    def _store_token(self, response: httpx.Response) -> str:
        url = self.token_url
        try:
            body = json.loads(response.content)
        except ValueError:
            raise ConnectorError(
                f"the token endpoint {url} answered {response.status_code} with a body that is "
                f"not JSON: {_preview(response)}"
            ) from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not token or not isinstance(token, str):
            raise ConnectorError(
                f"the token endpoint {url} answered without an access_token: {_preview(response)}"
            )
        token_type = str(body.get("token_type") or "bearer")
        if token_type.lower() != "bearer":
            raise ConnectorError(
                f"the token endpoint {url} issued a {token_type!r} token; only bearer tokens "
                "are supported"
            )
        try:
            lifetime = float(body.get("expires_in", DEFAULT_TOKEN_LIFETIME))
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME
        self.state["token"] = token
        self.state["token_expires_at"] = time.time() + lifetime
        self.state["token_for"] = self._fingerprint
        return token

    # --- data calls ----------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """``path`` relative to the base URL, or as it is when absolute (a next link)."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def get(self, path: str, params: dict | None = None) -> httpx.Response:
        """GET a path (relative to base_url, or an absolute next link); the 2xx response."""
        return self._call("GET", path, params=params, body=None, push=False)

    def get_json(self, path: str, params: dict | None = None) -> tuple[Any, httpx.Headers]:
        response = self.get(path, params)
        try:
            return json.loads(response.content), response.headers
        except ValueError:
            raise ConnectorError(
                f"GET {response.request.url} answered {response.status_code} with a body that "
                f"is not JSON: {_preview(response)}"
            ) from None

    def send_json(
        self, method: str, path: str, body: Any, *, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST/PUT/DELETE for pushes: any answer below 500 except 429 (the caller judges 4xx).

        429 and 5xx are retried like reads; a 401 refreshes the token once, and a second 401
        raises :class:`CredentialsRejected`. ``headers`` are sent as well (``If-Match`` for an
        optimistic write: a 412 answer is the caller's to judge, like any 4xx). ``body`` None
        sends no body (a DELETE).
        """
        return self._call(
            method.upper(), path, params=None, body=body, push=True, extra_headers=headers
        )

    def close(self) -> None:
        self._client.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict | None,
        body: Any,
        push: bool,
        extra_headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        url = self.url(path)
        shown = str(httpx.URL(url, params=params)) if params else url
        content = None if body is None else json.dumps(body).encode()
        refreshed = False
        failures = 0
        while True:
            headers = {**(extra_headers or {}), "Authorization": f"Bearer {self.token()}"}
            if content is not None:
                headers["Content-Type"] = "application/json"
            response, failure = self._attempt(
                method, url, params=params, content=content, headers=headers
            )
            status = response.status_code if response is not None else None
            if status == 401:
                if not refreshed:
                    # Revoked or expired before its time (a server restart, a rotated key).
                    self.log(f"{method} {shown} answered 401: fetching a new token and retrying")
                    self.invalidate_token()
                    refreshed = True
                    continue
                self.invalidate_token()
                raise CredentialsRejected(
                    f"{method} {shown} answered 401 even with a token just issued by "
                    f"{self.token_url}{_oauth_error(response)}"
                )
            if response is not None and status != 429 and status < 500:
                if 200 <= status < 300 or push:
                    return response
                if 300 <= status < 400:
                    where = response.headers.get("location", "")
                    raise HttpStatusError(
                        f"{method} {shown} answered {status}"
                        + (f" (redirect to {where})" if where else "")
                        + "; redirects are not followed: correct the URL",
                        url=shown,
                        status=status,
                    )
                raise HttpStatusError(
                    f"{method} {shown} answered {status}: {_preview(response)}",
                    url=shown,
                    status=status,
                )
            failures += 1
            self._wait_or_give_up(method, shown, response, failure, failures)

    # --- one attempt, and waiting between attempts -------------------------------------------

    def _attempt(
        self,
        method: str,
        url: str,
        *,
        params: dict | None = None,
        content: bytes | None = None,
        form: dict | None = None,
        headers: dict | None = None,
        auth: tuple[str, str] | None = None,
    ) -> tuple[httpx.Response | None, str]:
        """(response, "") or (None, what failed on the network). Never retries itself."""
        try:
            with self._client.stream(
                method,
                url,
                params=params,
                content=content,
                data=form,
                headers=headers,
                auth=auth,
            ) as streamed:
                chunks: list[bytes] = []
                size = 0
                for chunk in streamed.iter_bytes():
                    size += len(chunk)
                    if size > self.max_page_bytes:
                        raise ConnectorError(
                            f"{method} {streamed.request.url} answered more than "
                            f"{self.max_page_bytes // (1024 * 1024)} MiB; ask for smaller pages "
                            "(the page size parameter)"
                        )
                    chunks.append(chunk)
                # The body is decoded already: drop the headers that describe the wire form.
                kept = [
                    (k, v)
                    for k, v in streamed.headers.multi_items()
                    if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
                ]
                return (
                    httpx.Response(
                        streamed.status_code,
                        headers=kept,
                        content=b"".join(chunks),
                        request=streamed.request,
                    ),
                    "",
                )
        except OutboundGuardError as exc:
            # The address is refused by policy: retrying cannot help, the parameter is wrong.
            raise ConnectorError(f"{method} {url} is not allowed: {exc}", kind="input") from exc
        except (httpx.HTTPError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def _wait_or_give_up(
        self,
        method: str,
        url: str,
        response: httpx.Response | None,
        failure: str,
        failures: int,
    ) -> None:
        """Sleep before attempt ``failures + 1``, or raise when the attempts are used up."""
        last = f"HTTP {response.status_code}" if response is not None else failure
        if failures >= self.max_attempts:
            detail = f" ({_preview(response)})" if response is not None else ""
            raise ConnectorError(
                f"{method} {url} failed {failures} time(s) in a row; last: {last}{detail}",
                kind="unavailable",
            )
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1))
        wait = random.uniform(0, ceiling)
        why = "backoff with jitter"
        retry_after = _retry_after(response) if response is not None else None
        if retry_after is not None:
            wait = min(retry_after, self.backoff_cap)
            why = f"the source's Retry-After: {response.headers.get('retry-after')}"
            if retry_after > self.backoff_cap:
                why += f", capped at {self.backoff_cap:g} s"
        self.log(
            f"{method} {url}: {last}; waiting {wait:.1f} s ({why}) before attempt "
            f"{failures + 1} of {self.max_attempts}"
        )
        self.sleep(wait)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    value = (response.headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _preview(response: httpx.Response) -> str:
    return body_preview(response.content, limit=_PREVIEW) or "(empty body)"


def _oauth_error(response: httpx.Response | None) -> str:
    """ ", invalid_client: bad secret" from an RFC 6749 error body, or a preview of the body."""
    if response is None:
        return ""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        text = f": {body['error']}"
        if body.get("error_description"):
            text += f" ({body['error_description']})"
        return text
    preview = body_preview(response.content, limit=_PREVIEW)
    return f": {preview}" if preview else ""
