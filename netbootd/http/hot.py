"""The hot routes without Klein: /ipxe, /ipxe/<mac-or-uuid>, /files/<path>, /host/<path>, /boot/<name>.

Every booting machine asks for these; Klein spends about a fifth of such a request binding a
werkzeug URL map, matching it and running a chain of Deferreds (py-spy, bench/http_bench.py).
Here a plain split of the path picks the same BootApp method Klein would, and its answer is
rendered the same way. A request this split cannot route exactly as Klein would (another method,
a percent-escape, an empty or dot segment, a Host werkzeug would refuse) goes to the Klein app
unchanged, so URLs, statuses, headers and errors stay Klein's.
"""

from __future__ import annotations

import functools
from typing import Any

from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

_GET_HEAD = (b"GET", b"HEAD")  # werkzeug adds HEAD to every GET rule
_DOT_SEGMENTS = (b"", b".", b"..")


@functools.lru_cache(maxsize=1024)
def _host_routable(hostname: bytes) -> bool:
    """Klein binds werkzeug's map to the request's host name, which raises BadHost when the name
    does not IDNA-encode (GuardedResource answers 400 then): those go to Klein."""
    name = hostname.decode("utf-8", "replace").lower().partition(":")[0]
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return True


class HotRoutes(Resource):
    """In front of the Klein app's resource (a leaf, as the Klein resource is)."""

    isLeaf = True

    def __init__(self, app: Any, klein: Resource, error: Any) -> None:
        super().__init__()
        self._app = app  # netbootd.http.app.BootApp
        self._klein = klein
        self._error = error  # the HttpError class: answered as Klein's handler does

    def render(self, request):
        post = request.postpath
        handler = self._route(request, post) if request.method in _GET_HEAD and post else None
        if handler is None:
            return self._klein.render(request)
        try:
            result = handler()
        except self._error as err:
            return self._app._http_error(request, Failure(err))
        except Exception:
            request.processingFailed(Failure())  # what Klein does with an unhandled error: 500, logged
            return NOT_DONE_YET
        if IResource.providedBy(result):
            return result.render(request)
        return result

    def _route(self, request, post: list[bytes]):
        head, count = post[0], len(post)
        if head == b"ipxe":
            if count > 2:
                return None
        elif head not in (b"files", b"host", b"boot") or count < 2:
            return None
        if b"%" in request.path or any(segment in _DOT_SEGMENTS for segment in post):
            return None  # Klein's URL decoding and werkzeug's slash handling decide these
        if not _host_routable(request.getRequestHostname()):
            return None
        app = self._app
        if head == b"ipxe":
            if count == 1:
                return functools.partial(app.ipxe_stub_or_query, request)
            return functools.partial(app.ipxe_by_id, request, post[1].decode("utf-8"))
        rel = b"/".join(post[1:]).decode("utf-8")
        serve = app.files if head == b"files" else app.host_files if head == b"host" else app.binaries
        return functools.partial(serve, request, rel)
