"""Sending a request with redirects followed by hand, every hop checked before it is connected to."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from herbid.data.http_outcomes import _GiveUp, error_text
from herbid.data.url_policy import URLRefused, check_url

#: Redirects followed per request (httpx's own default), every hop checked like the first URL.
MAX_REDIRECTS = 20


@contextmanager
def _send_checked(
    client: httpx.Client,
    request: httpx.Request,
    *,
    allow_private_hosts: bool = False,
    hop_timeout: Callable[[], httpx.Timeout] | None = None,
) -> Iterator[httpx.Response]:
    """The streamed response to ``request``, redirects followed by hand, closed on exit.

    Every hop's URL passes :func:`~herbid.data.url_policy.check_url` right before it is
    connected to (raising :class:`URLRefused`), so neither a record nor a redirect can make
    herbid read ``file://``, ``gopher://`` or an internal address. ``hop_timeout`` gives
    each hop its timeouts (what is left of a deadline). A host name that does not resolve
    is an :class:`httpx.ConnectError`, as if httpx had tried.

    Residual risk: the name is resolved here and again by httpx to connect, so a DNS server
    answering a public address now and an internal one a moment later (DNS rebinding) is
    not caught; pinning the checked address would need a custom httpcore network backend.
    """
    for hop in range(MAX_REDIRECTS + 1):
        try:
            check_url(request.url, allow_private_hosts=allow_private_hosts)
        except URLRefused as refused:
            if not hop:
                raise
            where = f"redirect {hop} to {str(request.url)[:200]}"
            raise URLRefused(refused.reason, f"{where}; {refused.detail}" if refused.detail else where) from None
        except OSError as exc:
            raise httpx.ConnectError(error_text(exc), request=request) from exc
        if hop_timeout is not None:
            request.extensions = {**request.extensions, "timeout": hop_timeout().as_dict()}
        try:
            response = client.send(request, stream=True, follow_redirects=False)
        except httpx.InvalidURL as exc:  # a Location httpx cannot parse, e.g. "javascript:..."
            raise URLRefused("refused: not an http(s) URL", f"redirect {hop + 1}: {error_text(exc)}") from exc
        if response.next_request is None:
            try:
                yield response
            finally:
                response.close()
            return
        response.close()
        request = response.next_request
    raise _GiveUp(f"too many redirects: more than {MAX_REDIRECTS}")
