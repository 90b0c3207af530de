"""Where a job's webhook may go: the URL checked at submit (gateway and model server alike) and each
address checked again at connect time (the model server's sender), so DNS rebinding cannot reach inside.

``WEBHOOK_ALLOWED_HOSTS`` lists what may be called, comma-separated:
- ``*``: any host whose every address used is public (global unicast);
- ``*.example.com``: that domain's subdomains, public addresses only;
- ``hooks.example.com``: that exact name, at any address (listing a name is the operator's say-so,
  e.g. a receiver on the same private network);
- ``10.0.0.5``, ``10.0.0.0/8``, ``::1``: those addresses, named literally in the URL or resolved to.

Nothing private, loopback, link-local (cloud metadata at 169.254.169.254), multicast or reserved is
reached unless an exact name or an address entry says so. Empty: webhooks are off.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

from protocol.messages import MAX_CALLBACK_URL_LENGTH

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> _Address | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return mapped or address


def _is_name(text: str) -> bool:
    return bool(text) and not text.replace(".", "").isdigit() and all(
        part and set(part) <= _NAME_CHARS for part in text.split("."))


def is_public(address: _Address) -> bool:
    """A global unicast address: not private, loopback, link-local, multicast, reserved or unspecified."""
    return address.is_global and not address.is_multicast


class HostPolicy:
    """``WEBHOOK_ALLOWED_HOSTS`` read once (see the module)."""

    def __init__(self, entries: tuple[str, ...] | list[str] = ()):
        self.any_public = False
        self.suffixes: list[str] = []
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in entries:
            entry = raw.strip().lower()
            if entry == "*":
                self.any_public = True
            elif entry.startswith("*.") and _is_name(entry[2:].rstrip(".")):
                self.suffixes.append(entry[1:].rstrip("."))
            elif _is_name(entry.rstrip(".")) and parse_address(entry) is None:
                self.names.add(entry.rstrip("."))
            else:
                try:
                    self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                except ValueError:
                    raise ValueError(f"WEBHOOK_ALLOWED_HOSTS: {raw!r} is neither a host name nor an address") from None

    @property
    def enabled(self) -> bool:
        return bool(self.any_public or self.suffixes or self.names or self.networks)

    def _listed_address(self, address: _Address) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)

    def _matches_name(self, host: str) -> bool:
        return self.any_public or host in self.names or any(host.endswith(s) for s in self.suffixes)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be called (None: it may, subject to the connect-time check)."""
        if not url:
            return None
        if not self.enabled:
            return "webhooks are off on this server (WEBHOOK_ALLOWED_HOSTS is empty)"
        if len(url) > MAX_CALLBACK_URL_LENGTH:
            return f"the URL is longer than {MAX_CALLBACK_URL_LENGTH} characters"
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            return "the URL cannot be read"
        if parts.scheme not in ("http", "https"):
            return "only http:// and https:// URLs are called"
        if parts.username is not None or parts.password is not None:
            return "credentials in the URL are not sent; authenticate the webhook by its signature"
        if any(ch.isspace() or ord(ch) < 32 for ch in url):
            return "the URL contains whitespace or control characters"
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return "the URL has no host"
        if port == 0:
            return "port 0 cannot be called"
        literal = parse_address(host)
        if literal is not None:
            return self.address_refusal(host, literal)
        if host.isdigit() or host.startswith("0x"):  # 2130706433 and 0x7f000001 are 127.0.0.1 to a resolver
            return "a numeric host must be written as an address"
        if (host == "localhost" or host.endswith(".localhost")) and host not in self.names:
            return f"{host} is loopback: only an exact name listed in WEBHOOK_ALLOWED_HOSTS may be"
        if not self._matches_name(host):
            return f"{host} is not in WEBHOOK_ALLOWED_HOSTS"
        return None

    def address_refusal(self, host: str, address: _Address) -> str | None:
        """Why ``host``, resolved (or written) as ``address``, may not be connected to (None: it may)."""
        host = host.lower().rstrip(".")
        if self._listed_address(address):
            return None
        if host in self.names:  # listed by its exact name: the operator vouches for where it points
            return None
        if not is_public(address):
            where = f"{host} is at {address}" if parse_address(host) != address else str(address)
            return (f"{where}, a private, loopback or link-local address: only an exact name or an address listed "
                    "in WEBHOOK_ALLOWED_HOSTS may be called there")
        if parse_address(host) is not None:  # a public address written in the URL
            return None if self.any_public else f"{address} is not in WEBHOOK_ALLOWED_HOSTS"
        return None if self._matches_name(host) else f"{host} is not in WEBHOOK_ALLOWED_HOSTS"


def callback_violation(url: str, policy: HostPolicy) -> tuple[str, str, str] | None:
    """``(field, message, hint)`` when a job's ``callback_url`` may not be called; one wording for both
    processes (the gateway's 400 and the model server's ``invalid_params``)."""
    why = policy.refusal(url)
    if why is None:
        return None
    hint = ("Ask the operator to set WEBHOOK_ALLOWED_HOSTS and WEBHOOK_SECRET, or leave callback_url out."
            if not policy.enabled else
            "Use an http(s) URL whose host the server's WEBHOOK_ALLOWED_HOSTS allows, at a public address, or leave "
            "callback_url out.")
    return "callback_url", f"callback_url refused: {why}", hint
