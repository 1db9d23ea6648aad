"""How an HTTP attempt ends: worth retrying, given up on, or (to callers) a :class:`FetchError`.

An attempt raises :class:`_Retry` or :class:`_GiveUp`; the retry loop of
:mod:`herbid.data.download` judges them, and what still fails leaves herbid as a
:class:`FetchError` (JSON calls) or a reported problem (image downloads).
"""

from __future__ import annotations

import httpx


class FetchError(Exception):
    """An HTTP request that failed for good (after the retries the policy allows).

    ``unreachable`` is true when no connection could be made at all (DNS, refused, connect
    timeout): callers report that as "are you offline?" rather than as a bad answer.
    ``refused`` is true when herbid would not connect (a scheme or address it never fetches).
    """

    def __init__(self, url: str, reason: str, *, status: int | None = None, unreachable: bool = False,
                 refused: bool = False) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason
        self.status = status
        self.unreachable = unreachable
        self.refused = refused


def error_text(exc: BaseException) -> str:
    """A one-line description of ``exc`` (some httpx errors have an empty message)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --- one attempt's outcome, raised inside an attempt and judged by the retry loop --------------


class _Retry(Exception):
    """This attempt failed in a way worth trying again; ``wait`` overrides the back-off.

    ``throttle``: the server asked the whole host to slow down (429, or 503 with
    ``Retry-After``), so every request to it should wait, not only this one.
    """

    def __init__(self, reason: str, *, connect: bool = False, wait: float | None = None,
                 status: int | None = None, throttle: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connect = connect
        self.wait = wait
        self.status = status
        self.throttle = throttle


class _GiveUp(Exception):
    """This URL will not work however often it is asked (404, too large, not an image)."""

    def __init__(self, reason: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.detail = detail


def _classify_transport_error(exc: httpx.TransportError, timeout: float) -> _Retry:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return _Retry(f"unreachable: {error_text(exc)}", connect=True)
    if isinstance(exc, httpx.TimeoutException):
        return _Retry(f"timed out: no answer within {timeout:g} s")
    return _Retry(f"network error: {error_text(exc)}")
