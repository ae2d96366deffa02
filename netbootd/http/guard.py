"""The Klein app, shielded from requests that Klein itself mishandles (found by tests/fuzz).

- A Host header werkzeug cannot IDNA-encode (a label longer than 63 characters, say) raised
  `BadHost` out of Klein before routing: a 500 "Processing Failed" and a traceback in the log.
- A path or Host that is not UTF-8 once percent-decoded (`/files/%ff`) is answered 400 by Klein,
  but only after it logs a traceback: one per request, so any client could flood the journal.

Both are a plain 400 here, with a one-line reason, and nothing logged.
"""

from __future__ import annotations

from twisted.web.resource import Resource
from werkzeug.exceptions import HTTPException


def _utf8(parts) -> bool:
    try:
        for part in parts:
            part.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class GuardedResource(Resource):
    """Wraps the Klein app's resource (a leaf: it routes by itself)."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request):
        if not _utf8([request.getRequestHostname(), *request.prepath, *request.postpath]):
            return self._refuse(request, 400, "the URL or Host header is not UTF-8")
        try:
            return self._inner.render(request)
        except HTTPException as exc:  # raised by werkzeug while Klein binds the URL map
            return self._refuse(request, exc.code or 400, f"bad request: {exc.name}")

    @staticmethod
    def _refuse(request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return message.encode() + b"\n"
