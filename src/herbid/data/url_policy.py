"""Which URLs herbid fetches: http(s) only, and only hosts on the public internet.

Records and redirects come from other people's servers, so a media URL (or a redirect hop)
could point at ``file:///etc/passwd``, ``gopher://``, the cloud metadata service on
169.254.169.254 or a service on the user's own network. :func:`check_url` refuses all of
those before any connection is made; downloads and portal queries call it for every
request and every redirect hop. Users with an in-house image server on a private address
pass ``allow_private_hosts`` (``--allow-private-hosts``).
"""

from __future__ import annotations

import ipaddress
import socket

import httpx

__all__ = ["PRIVATE_HOSTS_HINT", "SUPPORTED_SCHEMES", "URLRefused", "check_url", "check_url_syntax",
           "non_public_reason", "unsupported_scheme"]

SUPPORTED_SCHEMES = frozenset({"http", "https"})
PRIVATE_HOSTS_HINT = "pass --allow-private-hosts for an in-house server"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class URLRefused(Exception):
    """A URL herbid will not fetch however often it is asked: never retried.

    ``reason`` is the short problem category ("unsupported URL scheme: 'ftp'",
    "refused address: 127.0.0.1 (loopback)"), ``detail`` the context (the host, the hop).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}; {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def unsupported_scheme(scheme: str) -> URLRefused:
    return URLRefused(f"unsupported URL scheme: {scheme.lower()!r}")


def check_url_syntax(url: str | httpx.URL) -> httpx.URL:
    """``url`` parsed as httpx will request it; refused unless it is http(s) with a host.

    No network I/O. Parsing with httpx (not :mod:`urllib`) matters: the host checked must
    be the host httpx connects to, whatever tricks the URL plays with ``@``, ``\\`` or ``%``.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise URLRefused("refused: not an http(s) URL", str(exc)) from None
    if parsed.scheme and parsed.scheme not in SUPPORTED_SCHEMES:
        raise unsupported_scheme(parsed.scheme)
    if not parsed.scheme or not parsed.host:
        raise URLRefused("refused: not an http(s) URL")
    return parsed


def check_url(url: str | httpx.URL, *, allow_private_hosts: bool = False) -> httpx.URL:
    """Refuse ``url`` unless it is http(s) and every address its host resolves to is public.

    Raises :class:`URLRefused`, or :class:`OSError` when the host name does not resolve
    (the caller reports that as unreachable, as a failed connection would be). Checking
    *every* address matters: a name with one public and one internal address could be
    connected to either.
    """
    parsed = check_url_syntax(url)
    if allow_private_hosts:
        return parsed
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded, IPv6 without brackets
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    for address in _addresses(host, port):
        why = non_public_reason(address)
        if why:
            shown = "" if str(address) == host else f"{host} resolves to it; "
            raise URLRefused(f"refused address: {address} ({why})", shown + PRIVATE_HOSTS_HINT)
    return parsed


def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [_ip(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(_ip(str(info[4][0])) for info in infos))


def _ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) is no part of the address


def non_public_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public internet host ("loopback", "private", ...), or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    # Most specific first: 127.0.0.1 and 169.254.169.254 are also "private" to ipaddress.
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
    )
    for label, hit in checks:
        if hit:
            return label
    # The rest that is not global, e.g. 100.64.0.0/10 (carrier-grade NAT).
    return None if address.is_global else "not globally routable"
