"""Which repository URLs this installation may fetch from: the operator's policy on top of the syntax
checks in `core.sources`.

By default only https:// to public addresses is allowed, so a server definition cannot make the
worker reach into the private network (cloud metadata, databases, the registry's admin API).
`GIT_ALLOW_INSECURE_URLS=true` also allows http://, file:// and private or loopback hosts, for
local and test use.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class GitUrlRejected(ValueError):
    """The URL is well formed but this installation does not fetch from it."""


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_git_url_policy(url: str, allow_insecure: bool) -> None:
    """Checks that need no network: scheme, and hosts that are private by their very name."""
    scheme = urlsplit(url).scheme.lower()
    if allow_insecure:
        return
    if scheme != "https":
        raise GitUrlRejected(
            f"{scheme}:// repositories are disabled on this installation; use https:// "
            "(operators can allow http:// and file:// with GIT_ALLOW_INSECURE_URLS=true)"
        )
    host = _host(url)
    if host == "localhost" or host.endswith(".localhost") or host.endswith(".internal"):
        raise GitUrlRejected(f"repository host {host!r} is a local name; use a public https:// URL")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return
    if not _is_public(literal):
        raise GitUrlRejected(f"repository host {host} is not a public address")


def check_git_url_resolves_public(url: str, allow_insecure: bool) -> None:
    """At fetch time: every address the host resolves to must be public (unless insecure URLs are allowed)."""
    check_git_url_policy(url, allow_insecure)
    if allow_insecure or urlsplit(url).scheme.lower() == "file":
        return
    host = _host(url)
    port = urlsplit(url).port or 443
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise GitUrlRejected(f"repository host {host!r} does not resolve: {exc.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not _is_public(address):
            raise GitUrlRejected(f"repository host {host!r} resolves to {address}, which is not a public address")
