"""The door of the server, in front of every route (API, OpenAPI page, web page, its websockets):

1. Host: a loopback server answers only to Host 127.0.0.1, localhost or [::1] (a web page on another site cannot
   reach it by pointing its own name at 127.0.0.1: DNS rebinding).
2. Token: when the server has one (always with --listen), every request carries it: `Authorization: Bearer T`,
   the cookie `diffusa_token`, or `?token=T`. A page opened with `?token=T` gets the cookie (HttpOnly,
   SameSite=Strict) and is redirected to the same address without the token, so it leaves the address bar.
3. Origin: a request that changes state (anything but GET/HEAD/OPTIONS) or opens a websocket, sent by a browser
   from another site, is refused (cross-site request forgery).
4. Size: a body over the limit is refused with 413, by its Content-Length or as it streams in.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse

from diffusa.errors import DiffusaError
from diffusa.serve.limits import MAX_BODY, MAX_UPLOAD, MIN_TOKEN

COOKIE = "diffusa_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC = frozenset({"/manifest.json"})  # the page's web-app manifest: browsers fetch it without cookies
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"x-frame-options", b"SAMEORIGIN")]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def check_token(token: str | None) -> str | None:
    """An access token: at least MIN_TOKEN characters of letters, digits, '-' and '_' (it travels in URLs)."""
    if token is None:
        return None
    if len(token) < MIN_TOKEN or not all(c.isascii() and (c.isalnum() or c in "-_") for c in token):
        raise DiffusaError(f"--token must be at least {MIN_TOKEN} characters of letters, digits, '-' and '_' "
                           "(omit it and one is generated)")
    return token


def new_token() -> str:
    """A random access token (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


class _TooLarge(Exception):  # noqa: N818 (control flow)
    pass


class Guard:
    """ASGI middleware: host, token, origin and body-size checks (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, token: str | None, loopback: bool) -> None:
        self.app, self.token, self.loopback = app, check_token(token), loopback

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        refusal = self._refusal(conn)
        if refusal is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await JSONResponse({"detail": refusal[1]}, refusal[0], headers=_text_headers())(scope, receive, send)
            return
        if (scope["type"] == "http" and self.token and conn.query_params.get("token") and scope["method"] == "GET"
                and not scope["path"].startswith("/api/")):
            # the page opened with ?token=T: keep it in a cookie, and take it out of the address
            rest = [(k, v) for k, v in conn.query_params.multi_items() if k != "token"]
            target = scope.get("root_path", "") + scope["path"] + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        limit = MAX_BODY if scope["path"].startswith("/api/") else MAX_UPLOAD
        length = conn.headers.get("content-length")
        if length is not None and (not length.isdecimal() or int(length) > limit):
            await _too_large(limit)(scope, receive, send)
            return
        seen, started = [0], [False]

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise _TooLarge
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in HEADERS if h[0] not in names)]
            await send(message)

        try:
            await self.app(scope, counted, send_with_headers)
        except _TooLarge:
            if started[0]:
                raise
            await _too_large(limit)(scope, receive, send)

    def _refusal(self, conn: HTTPConnection) -> tuple[int, str] | None:
        host = _hostname(conn.headers.get("host", ""))
        if self.loopback and host not in LOOPBACK_HOSTS:
            return 400, (f"this server answers on 127.0.0.1 / localhost only (Host {host!r}); to serve other "
                         "machines, start it with --listen")
        public = conn.scope["type"] == "http" and conn.scope["path"] in PUBLIC and conn.scope["method"] == "GET"
        if self.token is not None and not public and not self._authorized(conn):
            return 401, ("an access token is required: the header 'Authorization: Bearer TOKEN', or open the page "
                         "as /?token=TOKEN (diffusa serve printed it)")
        method = conn.scope.get("method", "GET")
        origin = conn.headers.get("origin")
        if origin is not None and (method not in SAFE_METHODS or conn.scope["type"] == "websocket"):
            if urlsplit(origin).netloc.lower() != conn.headers.get("host", "").lower():
                return 403, f"cross-origin request from {origin[:100]!r} refused"
        return None

    def _authorized(self, conn: HTTPConnection) -> bool:
        assert self.token is not None
        auth = conn.headers.get("authorization", "")
        given = [auth[7:].strip() if auth[:7].lower() == "bearer " else "", conn.cookies.get(COOKIE, ""),
                 conn.query_params.get("token", "")]
        want = self.token.encode()
        return any(secrets.compare_digest(g.encode("utf-8", "replace"), want) for g in given if g)


def _hostname(host: str) -> str:
    """The name in a Host header, without its port ('[::1]:7860' -> '::1')."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _text_headers() -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in HEADERS}


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"the request body is over the limit of {limit} bytes"}, 413,
                        headers=_text_headers())


__all__ = ["COOKIE", "Guard", "check_token", "new_token"]
