"""Run the web app with uvicorn, safe by default.

The server binds ``127.0.0.1`` unless told otherwise. Anything reachable from other
machines must either demand a bearer token or be opened explicitly with ``no_auth``:
a model server on ``0.0.0.0`` that anyone on the network can use to run inference (and
to list a collection's specimens) should never happen by accident. Tokens travel in
clear text over plain HTTP, so beyond a trusted network put a TLS proxy in front.

Only requests whose ``Host`` header names the server are answered (see
:func:`served_hosts`): a loopback server without a token must not be usable by a web
page whose own name was rebound to 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from herbid.data.imaging import DEFAULT_MAX_PIXELS
from herbid.errors import UserError
from herbid.web.app import DEFAULT_CONCURRENT_DECODES, DEFAULT_MAX_UPLOAD_PIXELS, MiB, answered_hosts, create_app

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Connections served at once; beyond it uvicorn answers 503. Bounds memory too: each
#: upload in flight holds at most ``max_upload_mb`` in memory.
DEFAULT_MAX_CONNECTIONS = 32


class UnsafeBindError(UserError, ValueError):
    """A bind address reachable from other machines without a token or an explicit --no-auth."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, ``localhost``).

    Other host names are not resolved: a name that happens to resolve to loopback today
    is still treated as public, which errs on the safe side.
    """
    name = host.strip().strip("[]").lower()
    if name in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, token: str | None = None, no_auth: bool = False) -> None:
    """Refuse unsafe or contradictory settings (raises :class:`UnsafeBindError`)."""
    if token is not None and not token.strip():
        raise UnsafeBindError("the token is empty; pass a long random string (e.g. `openssl rand -hex 32`)")
    if token is not None and no_auth:
        raise UnsafeBindError("--token and --no-auth contradict each other; choose one")
    if is_loopback(host) or token is not None or no_auth:
        return
    raise UnsafeBindError(
        f"refusing to serve on {host} without authentication: other machines could use it. "
        "Pass --token TOKEN (clients then send 'Authorization: Bearer TOKEN'), or --no-auth to open it "
        "to anyone who can reach it, or bind 127.0.0.1")


def is_wildcard(host: str) -> bool:
    """True for bind addresses that mean "every interface" (``0.0.0.0``, ``::``)."""
    name = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(name).is_unspecified
    except ValueError:
        return name == ""


def served_hosts(host: str, allowed_hosts: Sequence[str] | None = None) -> list[str]:
    """The Host header names ``serve`` answers when bound to ``host``; others get 400.

    Always the loopback names (``localhost``, ``127.0.0.1``, ``[::1]``), plus the bound
    address, or for a wildcard bind (``0.0.0.0``, ``::``) this machine's host name, plus
    every ``--allowed-host`` (``*.example.org`` and ``*`` are wildcards). Clients that use
    another name or an IP address of a wildcard-bound server need ``--allowed-host``.
    """
    own = [socket.gethostname()] if is_wildcard(host) else [host]
    return answered_hosts([*own, *(allowed_hosts or ())])


def serve(bundle: str | Path, index: str | Path | None = None, *, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, token: str | None = None, no_auth: bool = False,
          max_upload_mb: float = 20, max_pixels: int = DEFAULT_MAX_PIXELS, device: str = "auto",
          max_connections: int = DEFAULT_MAX_CONNECTIONS, log_level: str = "info",
          max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS, concurrent_decodes: int = DEFAULT_CONCURRENT_DECODES,
          allowed_hosts: Sequence[str] | None = None) -> None:
    """Check the bind rules, load the model, and serve until interrupted."""
    import uvicorn

    check_bind(host, token=token, no_auth=no_auth)
    if max_upload_mb <= 0:
        raise ValueError("--max-upload-mb must be positive")
    hosts = served_hosts(host, allowed_hosts)  # validated before the slow model load
    app = create_app(bundle, index, token=token, max_upload_bytes=int(max_upload_mb * MiB),
                     max_pixels=max_pixels, device=device, max_upload_pixels=max_upload_pixels,
                     concurrent_decodes=concurrent_decodes, allowed_hosts=hosts)
    if "*" in hosts:
        log.warning("--allowed-host '*': requests naming any Host are answered (no DNS-rebinding defence)")
    else:  # Starlette's 400 says only "Invalid host header": say here what is answered
        log.log(logging.WARNING if is_wildcard(host) else logging.INFO,
                "answering requests for Host %s; others get 400 (add names with --allowed-host NAME)",
                ", ".join(hosts))
    if no_auth and not is_loopback(host):
        log.warning("serving on %s without authentication (--no-auth): anyone who can reach it can use it", host)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False,
                limit_concurrency=max_connections, timeout_keep_alive=5)


@contextmanager
def running_server(app: Any, host: str = DEFAULT_HOST, port: int = 0, *, timeout: float = 30.0,
                   log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` from a background thread; yield its base URL, stop it on exit.

    For tests, the browser check and the load test: the socket is bound here (port 0 =
    a free port, no race) and only loopback addresses are accepted.
    """
    import uvicorn

    if not is_loopback(host):
        raise UnsafeBindError(f"running_server binds loopback addresses only, not {host}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, server_header=False, timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="herbid-web", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread, timeout)
        bound = sock.getsockname()
        yield f"http://{'[' + bound[0] + ']' if family == socket.AF_INET6 else bound[0]}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def _wait_started(server: Any, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the web server thread stopped during start-up (see its log)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the web server did not start within {timeout:.0f} s")
        time.sleep(0.02)
