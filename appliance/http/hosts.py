"""Allowed `Host` headers: the guard against DNS rebinding.

A web page the user visits can point its own domain at 127.0.0.1 and then script requests to the
appliance as "same origin" — but its requests carry that domain in `Host`. Only the names in
`Settings.trusted_hosts` (loopback, the bind address and AISTUDIO_ALLOWED_HOSTS, any port) are
answered; any other Host gets a 400 envelope before the request reaches anything else. `*` in the
setting turns the check off (a reverse proxy that checks Host itself); `*.example.com` allows
subdomains. Pure ASGI, so it also guards streaming routes and costs one header look-up.
"""

from __future__ import annotations

from appliance.http.envelope import error_response

CODE = "HOST_NOT_ALLOWED"


def host_name(header: str) -> str:
    """`Host` without its port, lower-case: `[::1]:8000` → `::1`, `Example.com:80` → `example.com`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.index("]")] if "]" in header else header
    name, colon, port = header.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else header


def host_allowed(name: str, allowed: list[str]) -> bool:
    for pattern in allowed:
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class AllowedHostsMiddleware:
    test_hosts: tuple[str, ...] = ()  # tests/conftest.py adds Starlette TestClient's `testserver`

    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.allowed = [h.lower() for h in (*allowed, *self.test_hosts)]
        self.any = "*" in self.allowed

    async def __call__(self, scope, receive, send):
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope.get("headers", ()) if k == b"host"), b"")
        header = raw.decode("latin-1")
        if header and host_allowed(host_name(header), self.allowed):
            await self.app(scope, receive, send)
            return
        message = (f"Host {header[:100]!r} is not allowed; add it to AISTUDIO_ALLOWED_HOSTS" if header
                   else "The request has no Host header; AISTUDIO_ALLOWED_HOSTS lists the host names this appliance answers")
        if scope["type"] == "websocket":  # no websocket routes today; refuse before accepting
            await send({"type": "websocket.close", "code": 1008})
            return
        await error_response(400, CODE, message)(scope, receive, send)
