"""Address guard: keep requests for untrusted URLs away from internal networks.

Image URLs come from a public catalogue, so a URL (or a redirect it leads to) may name
a loopback, private, link-local or multicast address, the cloud metadata address
169.254.169.254 among them. ``GuardedResolver`` is given to aiohttp's connector: it
resolves each host name and drops every address that is not globally routable, and
refuses the host when none is left. The connector connects only to the addresses the
resolver returns, so a host name that resolves to a public address first and a private
one later (DNS rebinding) is checked on every lookup. aiohttp does not call the
resolver for IP-literal hosts, so ``AddressGuard.check_url`` checks those before each
request and each redirect hop.

``allow_private=True`` turns the guard off. ``allowed_networks`` opens only the
networks it names, such as ``127.0.0.1/32`` for the tests' local servers.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

logger = logging.getLogger(__name__)


class AddressRefused(OSError):
    """A host resolves only to addresses the guard does not allow."""


def is_allowed_address(address: str) -> bool:
    """Return True for a globally routable unicast address.

    Loopback, private (RFC 1918, unique local), link-local (169.254.0.0/16 with the
    metadata address, fe80::/10), shared (100.64.0.0/10), multicast, reserved and
    unspecified addresses return False; an IPv4-mapped IPv6 address is judged by the
    IPv4 address inside it.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class AddressGuard:
    """The address policy for one run: refuse non-public addresses unless allowed.

    ``allowed_networks`` are CIDR strings (``"127.0.0.1/32"``); ValueError names an
    invalid one.
    """

    def __init__(self, allow_private: bool = False, allowed_networks: tuple[str, ...] = ()):
        self.allow_private = allow_private
        self.networks = []
        for network in allowed_networks:
            try:
                self.networks.append(ipaddress.ip_network(network, strict=False))
            except ValueError as exc:
                raise ValueError(
                    f"allowed network {network!r} is not a CIDR range such as 127.0.0.1/32: {exc}"
                ) from exc

    def allows(self, address: str) -> bool:
        """Return True when the policy lets a connection to ``address`` through."""
        if self.allow_private or is_allowed_address(address):
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)

    def check_address(self, host: str, address: str) -> None:
        """Raise AddressRefused if ``address`` (of ``host``) may not be contacted."""
        if not self.allows(address):
            raise AddressRefused(
                f"host {host!r} resolves to {address}, a private, loopback, link-local or "
                "multicast address; allow its network with --allow-network CIDR, or all such "
                "addresses with ALLOW_PRIVATE_ADDRESSES=1"
            )

    def check_url(self, url: URL) -> None:
        """Check a URL whose host is an IP literal; host names are checked on resolution."""
        host = url.host or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return
        self.check_address(host, host)


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that returns only the addresses ``guard`` allows."""

    def __init__(self, guard: AddressGuard, resolver: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._resolver = resolver or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        allowed = [r for r in results if self._guard.allows(r["host"])]
        if not allowed:
            addresses = ", ".join(sorted({r["host"] for r in results}))
            raise AddressRefused(
                f"host {host!r} resolves only to non-public addresses ({addresses}); "
                "allow their network with --allow-network CIDR, or all such addresses with "
                "ALLOW_PRIVATE_ADDRESSES=1"
            )
        if len(allowed) < len(results):
            logger.debug("dropped non-public addresses of %s", host)
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


def refused_reason(exc: BaseException) -> str | None:
    """Return the guard's message when ``exc`` (or what it wraps) is an AddressRefused."""
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, AddressRefused):
            return str(current)
        current = getattr(current, "os_error", None) or current.__cause__
    return None
