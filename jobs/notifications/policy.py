"""Where a notification may be sent (no server-side request forgery).

http and https URLs only, no credentials in them, a host that is a name or an address in its
usual form. With NOTIFY_ALLOWED_HOSTS empty, any host whose every address is public: loopback,
private, link-local, shared, reserved and multicast addresses are refused, however they are
written (`127.1`, `2130706433`, `0x7f000001` and the other numeric spellings a resolver accepts
are read as the address they mean). With NOTIFY_ALLOWED_HOSTS set, only those hosts, whatever
their addresses (the operator vouched for them). `url_problem` judges the URL alone, when a job
is submitted; `resolve_checked` resolves the name when sending and checks every address, and
the POST goes to a checked address, so a name that changes its answer in between cannot
redirect it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from jobs.settings import Settings

MAX_URL_CHARS = 2000
# What the schema says of notify.url (printable ASCII: http or https, a host part, then path,
# query or fragment); url_problem says the rest, which depends on the server's settings.
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[-A-Za-z0-9._~%!$&'()*+,;=:\[\]]+(?:[/?#][!-~]*)?$"
# A host made only of numbers (decimal, octal or hex) and dots: resolvers read it as an IPv4
# address (inet_aton's forms), so it is judged as one.
_NUMERIC_HOST = re.compile(r"(?:0[xX][0-9A-Fa-f]*|[0-9]+)(?:\.(?:0[xX][0-9A-Fa-f]*|[0-9]+))*")
PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


class Refused(Exception):
    """The destination is not allowed; trying again will not change that."""


def refused_address(address: str) -> bool:
    """Not a public unicast address: loopback, private, link-local, shared, reserved, multicast,
    unspecified (an IPv4 address inside IPv6 is judged as IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            ip = embedded
    return not ip.is_global or ip.is_multicast


def host_address(host: str) -> str | None:
    """The address a host written as an address means, in its usual form (`127.1` is
    127.0.0.1); None for a name. ValueError for numbers no resolver reads as an address."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not _NUMERIC_HOST.fullmatch(host):
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        raise ValueError(f"{host} is neither a host name nor an IPv4 address") from None


def url_problem(url: str, settings: Settings) -> str | None:
    """Why this URL may not receive notifications, from the URL alone (no name is resolved
    here; that is done, and checked, when sending); None if it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"not a valid URL ({error})"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (user:password@)"
    if not re.fullmatch(URL_PATTERN, url):
        return "must be printable ASCII without spaces (percent-encode the rest)"
    # A name ends in at most one dot (the root); `localhost.` is localhost.
    host = (parts.hostname or "").lower().removesuffix(".")
    if not host:
        return "must name a host"
    if "%" in host and not host.startswith("fe80"):
        return "must not percent-encode the host"
    if port == 0:
        return "port 0 is not a port"
    allowed = settings.notify_allowed_hosts
    if allowed:
        return None if host in allowed else f"host {host} is not in NOTIFY_ALLOWED_HOSTS"
    try:
        address = host_address(host)
    except ValueError as error:
        return str(error)
    if address is not None:
        if refused_address(address):
            spelled = "" if address == host else f" ({address})"
            return (
                f"{host}{spelled} is a loopback, private, link-local or otherwise non-public "
                "address"
            )
        return None
    if host == "localhost" or host.endswith(PRIVATE_SUFFIXES):
        return f"{host} names this machine or a private network"
    return None


def resolve_checked(url: str, settings: Settings) -> list[str]:
    """The addresses to connect to for this URL's host, every one allowed; Refused otherwise."""
    problem = url_problem(url, settings)
    if problem is not None:
        raise Refused(f"notify.url {problem}")
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise OSError(f"cannot resolve {host}: {error}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not settings.notify_allowed_hosts:
        bad = [address for address in addresses if refused_address(address)]
        if bad:
            raise Refused(f"{host} resolves to a non-public address ({', '.join(bad)})")
    if not addresses:
        raise OSError(f"{host} has no address")
    return addresses
