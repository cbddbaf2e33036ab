"""The rules that make the page safe to expose: a token on every request when one is set, a
CSRF token on every POST, and headers that keep the browser from running what a script wrote.

The token arrives once in the URL (`?token=...`, as Jupyter prints it), then lives in an
HttpOnly, SameSite=Strict cookie. The CSRF token is a secret of this server process embedded in
its forms: another site's page cannot read it, so cannot forge a POST.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_COOKIE = "orchestra_token"
CSRF_FIELD = "csrf"
PAGE_CSP = ("default-src 'none'; script-src 'self' 'unsafe-eval'; style-src 'self' "
            "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; font-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# A file a script wrote is shown, never run: no script, no plugin, a sandboxed origin.
FILE_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class Guard:
    """ASGI middleware: the token check, and the safety headers on every answer."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        from_url = request.query_params.get("token")
        if self.token is not None and not (
                same(request.cookies.get(TOKEN_COOKIE), self.token)
                or same(from_url, self.token)
                or same(_bearer(request), self.token)):
            await PlainTextResponse("a token is needed: open the URL the server printed",
                                    status_code=403)(scope, receive, send)
            return
        set_cookie = self.token is not None and same(from_url, self.token)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"),
                            (b"x-frame-options", b"DENY")]
                if set_cookie:
                    cookie = Response()
                    cookie.set_cookie(TOKEN_COOKIE, self.token, httponly=True,
                                      samesite="strict")
                    headers += [h for h in cookie.raw_headers if h[0] == b"set-cookie"]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    kind, _, token = value.partition(" ")
    return token if kind.lower() in ("token", "bearer") and token else None


def check_csrf(request: Request, form_value: str | None, expected: str) -> bool:
    """A POST is ours when it carries this server's CSRF token and, if the browser says where
    it comes from, comes from this very origin."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != own:
            return False
    return same(form_value, expected)
