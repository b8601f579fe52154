"""Which addresses a manifest URL may reach: public ones only, unless a network is allowed.

Every address a host name resolves to is checked, and the connection is then opened to one of
those checked addresses (never by name again), so a DNS answer that changes between the check
and the connection (DNS rebinding) cannot redirect it. Embedded IPv4 addresses (IPv4-mapped,
NAT64, 6to4, Teredo) are checked as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache

from capmill.errors import FetchFailed, InputRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@lru_cache(maxsize=64)
def _networks(allowed: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(n, strict=False) for n in allowed)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def _kind(ip: IPAddress) -> str | None:
    """What makes `ip` non-public, or None for a public unicast address."""
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a public address"
    return None


def refusal(address: str, allowed: tuple[str, ...] = ()) -> str | None:
    """Why a connection to `address` is refused, or None when it may be opened."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    except ValueError:
        return f"{address!r} is not an IP address"
    for net in _networks(allowed):
        if ip.version == net.version and ip in net:
            return None
    inner = _embedded_v4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if inner is not None:
        reason = refusal(str(inner), allowed)
        return f"{ip} embeds {inner}: {reason}" if reason else None
    kind = _kind(ip)
    if kind is None:
        return None
    return f"{ip} is {kind} (refused unless fetch.allow_networks lists it)"


def resolve(host: str, port: int, allowed: tuple[str, ...] = ()) -> list[str]:
    """The addresses of `host`, every one checked. One refused address refuses the host: a name
    that resolves to a public and a private address is not trusted with either."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchFailed(f"cannot resolve {host!r}: {e.strerror or e}") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    for address in addresses:
        reason = refusal(address, allowed)
        if reason is not None:
            raise InputRefused(reason if address == host else f"{host} -> {reason}")
    if not addresses:
        raise FetchFailed(f"{host!r} has no address")
    return addresses
