"""The farm's page: a live view of jobs, nodes and the image as it renders, served by the controller at `/`.

The page is static HTML, JavaScript and CSS shipped in this package (no build step, nothing fetched
from another host). It holds no data: everything it shows comes from the same XML-RPC API the command
line uses, called with the token the user signs in with as the Bearer, so the static files are served
without a token and every API call still needs one. `serve` answers the RPC server's GET requests.
"""

from __future__ import annotations

import functools
import http
import importlib.resources
import logging
import urllib.parse
from typing import Any

log = logging.getLogger(__name__)

# URL path -> (file beside this module, content type). Nothing else is served.
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/colours.js": ("colours.js", "text/javascript; charset=utf-8"),
    "/eta.js": ("eta.js", "text/javascript; charset=utf-8"),
    "/words.js": ("words.js", "text/javascript; charset=utf-8"),
    "/canvas.js": ("canvas.js", "text/javascript; charset=utf-8"),
    "/feed.js": ("feed.js", "text/javascript; charset=utf-8"),
    "/submit.js": ("submit.js", "text/javascript; charset=utf-8"),
    "/downloads.js": ("downloads.js", "text/javascript; charset=utf-8"),
    "/xmlrpc.js": ("xmlrpc.js", "text/javascript; charset=utf-8"),
    "/zip.js": ("zip.js", "text/javascript; charset=utf-8"),
    "/logs.js": ("logs.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}

# The page runs only its own files and talks only to its own controller; it may not be framed.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self' blob:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@functools.lru_cache(maxsize=None)
def static_file(name: str) -> bytes:
    """The bytes of one of the page's files (read once)."""
    return importlib.resources.files(__name__).joinpath(name).read_bytes()


def serve(handler: Any) -> None:
    """Answer a GET request on the RPC server's handler with one of the page's files, or 404."""
    path = urllib.parse.urlsplit(handler.path).path
    entry = FILES.get(path)
    if entry is None:
        _send(handler, http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        return
    name, content_type = entry
    try:
        body = static_file(name)
    except OSError as err:
        log.error("the page's file %s cannot be read: %s", name, err)
        _send(handler, http.HTTPStatus.INTERNAL_SERVER_ERROR, b"the page is not installed\n",
              "text/plain; charset=utf-8")
        return
    _send(handler, http.HTTPStatus.OK, body, content_type)


def _send(handler: Any, status: http.HTTPStatus, body: bytes, content_type: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in HEADERS.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)
