"""Posting to addresses a client chose, without letting it aim Relay at its own network.

A URL is checked after DNS resolution: every address its host resolves to must be globally
routable (no private, loopback, link-local, shared, multicast or reserved range) unless the
caller allows private ones. The POST then connects to the address that was checked, never
resolving the name again (no DNS rebinding between check and connect), with the name kept
in the ``Host`` header and, for https, in the TLS server name (SNI) and certificate check.
Redirects are never followed, and no proxy from the environment is used.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}
# Certificates are checked against the system's (certifi's) authorities; a test trusts its own.
TLS_VERIFY: ssl.SSLContext | bool = True


class Refusal(StrEnum):
    """Why a URL may not be posted to."""

    INVALID = "invalid_url"  # not an absolute http(s) URL with a host, or has credentials
    UNRESOLVABLE = "unresolvable"  # its host has no address (now)
    PRIVATE = "private_address"  # it resolves to an address inside a private network


class UrlRefusedError(ValueError):
    """The URL may not be posted to; ``reason`` says why, the message says what to do."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``address``) and what to call it (``host``)."""

    scheme: str
    host: str
    port: int
    address: str
    path: str  # with its query

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the name, and the port when it is not the scheme's own."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if DEFAULT_PORTS[self.scheme] == self.port else f"{name}:{self.port}"

    @property
    def pinned_url(self) -> str:
        """The URL with the checked address in place of the name."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return urlunsplit((self.scheme, f"{address}:{self.port}", self.path, "", ""))


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to now (tests replace this to change DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: str) -> bool:
    """Whether an address is globally routable (an IPv4-mapped IPv6 address counts as the
    IPv4 address it carries)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def check(url: str, *, allow_private: bool) -> Target:
    """The URL's target once its host is resolved and every address is allowed; raises
    ``UrlRefusedError`` otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError as err:
        raise UrlRefusedError(Refusal.INVALID, f"not a valid URL: {err}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise UrlRefusedError(Refusal.INVALID, "an absolute http:// or https:// URL is needed")
    if parts.username is not None or parts.password is not None:
        raise UrlRefusedError(
            Refusal.INVALID, "credentials in the URL are not supported: put a token in the path"
        )
    host = parts.hostname
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as err:
        raise UrlRefusedError(Refusal.UNRESOLVABLE, f"{host} does not resolve: {err}") from None
    if not addresses:
        raise UrlRefusedError(Refusal.UNRESOLVABLE, f"{host} resolves to no address")
    private = [a for a in addresses if not is_public(a)]
    if private and not allow_private:
        raise UrlRefusedError(
            Refusal.PRIVATE,
            f"{host} resolves to {private[0]}, which is not a public address "
            "(RELAY_CALLBACK_ALLOW_PRIVATE allows it)",
        )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(parts.scheme, host, port, addresses[0], path)


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST ``body`` to the checked target's address; the answer's status code (a 3xx is
    not followed, and the answer's body is not read). Raises httpx's errors (timeouts,
    connection failures)."""
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    with (
        httpx.Client(
            timeout=timeout, follow_redirects=False, trust_env=False, verify=TLS_VERIFY
        ) as client,
        client.stream(
            "POST",
            target.pinned_url,
            content=body,
            headers={**headers, "Host": target.host_header},
            extensions=extensions,
        ) as answer,
    ):
        return answer.status_code
