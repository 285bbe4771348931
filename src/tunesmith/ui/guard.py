"""The UI's safety rules, checked before any route runs: token, Host, where POSTs come from, body size.

- With a token, every `/api` and `/runs` request carries it (`Authorization: Bearer T`, `X-Tunesmith-Token: T`
  or `?token=T`, the last for EventSource and links, which cannot set headers); compared in constant time.
- The Host header must name this server (a web page cannot reach it through a DNS name it controls).
- A POST must carry `X-Tunesmith-UI: 1`: a browser sends such a header cross-site only after a preflight this app
  never grants, so another site's form cannot start or stop training.
- Bodies are capped: `max_upload_bytes` for uploads, `MAX_JSON_BYTES` for the rest (413 beyond).
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from starlette.responses import JSONResponse

MAX_JSON_BYTES = 1_000_000
PUBLIC_PATHS = ("/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
"""The page and its script and style hold no data, so the page can load and then ask for the token."""


class BodyTooLarge(Exception):
    """A request body grew past its limit while it was read."""

    def __init__(self, limit: int):
        super().__init__(f"request body is larger than {limit} bytes")
        self.limit = limit


def too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"request body is larger than {limit:,} bytes"}, status_code=413)


class Guard:
    """ASGI middleware applying the rules above to every HTTP request."""

    def __init__(self, app, token: str | None, max_upload_bytes: int, allowed_hosts: frozenset[str] | None):
        self.app, self.token, self.max_upload_bytes = app, token, max_upload_bytes
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        limit = self.max_upload_bytes if scope["path"] == "/api/upload" else MAX_JSON_BYTES
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await too_large(limit)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)

    def refusal(self, scope) -> JSONResponse | None:
        """The response refusing this request, or None when it may go on."""
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1").rsplit(":", 1)[0].strip("[]").lower()
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return JSONResponse({"error": f"Host {host!r} is not this server's; open it as "
                                          f"http://127.0.0.1:PORT/"}, status_code=400)
        path = scope["path"]
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if self.token is not None and not public and not self.authorized(scope, headers):
            return JSONResponse({"error": "this UI needs its token: open it as http://HOST:PORT/?token=TOKEN "
                                          "(or send `Authorization: Bearer TOKEN`)"}, status_code=401)
        if scope["method"] == "POST" and headers.get(b"x-tunesmith-ui") != b"1":
            return JSONResponse({"error": "POST requests must come from the tunesmith page "
                                          "(header `X-Tunesmith-UI: 1`)"}, status_code=403)
        return None

    def authorized(self, scope, headers: dict) -> bool:
        scheme, _, bearer = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        candidates = [bearer.strip() if scheme.lower() == "bearer" else "",
                      headers.get(b"x-tunesmith-token", b"").decode("latin-1")]
        candidates += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        # compare_digest takes the same time wherever the strings differ, so the token cannot be guessed by timing
        return any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates if c)
