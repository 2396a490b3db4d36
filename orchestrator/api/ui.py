"""The web dashboard: ``/ui/`` and its static assets, and the browser test for ``GET /``.

The page (``orchestrator/ui/``: ``index.html``, ``app.css``, ``app.js``) is plain HTML, CSS and
JavaScript with no third-party code, so it works offline and needs no build step. It talks to
the same API as ``curl`` does, from the same origin, so the API's CORS rules apply to it
unchanged.

The assets are read once, when the routes are built: they ship inside the package and do not
change under a running daemon. Each answer carries a strong ``ETag`` and ``Cache-Control:
no-cache`` (revalidate every time, then a cheap ``304``): the file names carry no version, so an
upgraded daemon must never be hidden behind a cached script. A strict Content-Security-Policy
allows only same-origin scripts, styles and requests, which makes an HTML injection through
model output inert even if the Markdown renderer had a bug.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import falcon

from orchestrator.errors import NotFoundError

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext

log = logging.getLogger(__name__)

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
UI_PATH = "/ui/"
INDEX_NAME = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
CACHE_CONTROL = "no-cache"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def wants_html(req: falcon.Request) -> bool:
    """Return whether the client is a browser asking for a page (``Accept`` names HTML).

    ``curl`` sends ``Accept: */*`` and scripts usually send nothing, so they keep getting
    DMR's plain-text answer at ``/``.
    """
    accept = (req.get_header("Accept") or "").lower()
    return "text/html" in accept


class Asset:
    """One static file held in memory with its validators.

    Args:
        name: File name under ``orchestrator/ui/``.
        data: Its bytes.
    """

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data
        self.content_type = CONTENT_TYPES[Path(name).suffix]
        self.etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def load_assets(directory: Path = UI_DIR) -> dict[str, Asset]:
    """Return the dashboard's files by name (those with a known type; none if it is missing)."""
    assets: dict[str, Asset] = {}
    try:
        paths = sorted(directory.iterdir())
    except OSError as ex:
        log.warning("dashboard assets missing path=%s error=%s", directory, ex)
        return assets
    for path in paths:
        if path.suffix in CONTENT_TYPES and path.is_file():
            assets[path.name] = Asset(path.name, path.read_bytes())
    return assets


class UIResource:
    """``GET /ui/`` (the page) and ``GET /ui/{name}`` (its assets); ``/ui`` redirects.

    Args:
        assets: The files to serve, by name (default: the packaged dashboard).
    """

    def __init__(self, assets: dict[str, Asset] | None = None) -> None:
        self.assets = load_assets() if assets is None else assets

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str = INDEX_NAME) -> None:
        asset = self.assets.get(name)
        if asset is None:
            # Only names from the fixed set are served: no path ever reaches the filesystem.
            raise NotFoundError(f"no dashboard file {name!r}; open {UI_PATH} in a browser")
        resp.set_header("Cache-Control", CACHE_CONTROL)
        resp.set_header("ETag", asset.etag)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        if asset.content_type.startswith("text/html"):
            resp.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            resp.set_header("X-Frame-Options", "DENY")
        if asset.etag in _etags(req.get_header("If-None-Match")):
            # A 304 carries the validators but no body and no Content-Type (RFC 9110 15.4.5).
            resp.status = 304
            return
        resp.content_type = asset.content_type
        resp.data = asset.data

    on_head = on_get

    def on_get_index(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Serve the page itself (``/ui/``)."""
        self.on_get(req, resp, INDEX_NAME)

    on_head_index = on_get_index

    def on_get_bare(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Send ``/ui`` to ``/ui/`` so that the page's relative asset links resolve."""
        redirect(resp, UI_PATH)

    on_head_bare = on_get_bare


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    # A weak validator still matches for GET (RFC 9110 13.1.2 uses the weak comparison).
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def redirect(resp: falcon.Response, location: str) -> None:
    """Answer ``302 Found`` to ``location`` with an empty body."""
    resp.status = 302
    resp.set_header("Location", location)
    resp.set_header("Cache-Control", "no-store")
    resp.content_type = falcon.MEDIA_TEXT
    resp.data = b""


def add_routes(app: falcon.App, ctx: ApiContext | None = None) -> None:
    """Register ``/ui``, ``/ui/`` and ``/ui/{name}``."""
    resource = UIResource()
    app.add_route("/ui", resource, suffix="bare")
    app.add_route(UI_PATH, resource, suffix="index")
    app.add_route(UI_PATH + "{name}", resource)
