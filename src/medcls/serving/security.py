"""The web service's defences, as one ASGI middleware: security headers on every answer (a
Content-Security-Policy that fits the page: its own scripts, styles and ``blob:`` images
only, never framed), a ``Host`` check against DNS rebinding (a foreign web page resolving
its own name to 127.0.0.1 would otherwise reach a loopback service from the browser), and
an optional API key for the ``/v1/`` endpoints and ``/metrics`` (``Authorization: Bearer KEY``
or ``X-API-Key: KEY``)."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field

from medcls.serving.limits import problem

API_KEY_ENV = "MEDCLS_API_KEY"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# /metrics too: it tells the site's prediction mix and flag rate (Prometheus scrapes with a bearer
# token); the page, its static files, /healthz (liveness probes) and the API docs stay open
PROTECTED = ("/v1/", "/metrics")

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# /docs and /redoc: Swagger UI and ReDoc (served by the service itself) are configured by an inline
# script and style themselves inline; ReDoc runs a worker from a blob.
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; worker-src blob:; connect-src 'self'; "
            "base-uri 'none'; frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin")]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address to bind) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class SecuritySettings:
    api_key: str | None = None  # None: no key needed
    # names a client may call the service by (the Host header, port left out); "*": any
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_NAMES))

    @classmethod
    def for_bind(cls, host: str, api_key: str | None = None, allowed_hosts: list[str] | None = None):
        """The settings for a service bound to ``host``: loopback names, plus ``host`` itself;
        any name when bound to all addresses (0.0.0.0, ::) and no names are given."""
        if allowed_hosts:
            return cls(api_key, list(allowed_hosts))
        if host in ("0.0.0.0", "::", ""):
            return cls(api_key, ["*"])
        return cls(api_key, sorted({*LOOPBACK_NAMES, host.strip("[]")}))


def host_name(header: str) -> str:
    """The name in a Host header, port and IPv6 brackets removed, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """ASGI middleware: the Host check, the API key, and the security headers."""

    def __init__(self, app, settings: SecuritySettings):
        self.app, self.settings = app, settings
        self.key = settings.api_key.encode() if settings.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        policy = (DOCS_CSP if path.startswith(DOCS_PATHS) else PAGE_CSP).encode()
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        allowed = self.settings.allowed_hosts
        if "*" not in allowed and host not in allowed:
            return await problem(send, 400, f"unknown host {host or '(none)'!r}: this service answers to "
                                            f"{', '.join(allowed)} (serve --allowed-host adds names)",
                                 self._headers(policy))
        if self.key is not None and path.startswith(PROTECTED) and not self._authorised(headers):
            return await problem(send, 401, "missing or wrong API key: send it as 'Authorization: Bearer KEY' "
                                            "or 'X-API-Key: KEY'",
                                 [*self._headers(policy), (b"www-authenticate", b"Bearer")])

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self._headers(policy)]
            await send(message)

        await self.app(scope, receive, with_headers)

    @staticmethod
    def _headers(policy: bytes) -> list[tuple[bytes, bytes]]:
        return [*HEADERS, (b"content-security-policy", policy)]

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given, self.key)
