"""``GET /`` (the liveness text DMR answers) and ``/version``."""

from __future__ import annotations

import json

import falcon

from orchestrator import __version__
from orchestrator.api.ui import UI_PATH, redirect, wants_html

RUNNING_TEXT = "Docker Model Runner is running"


class RootResource:
    """``GET /``: plain text, as DMR's root handler; a browser is sent to the dashboard."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if wants_html(req):
            redirect(resp, UI_PATH)
            return
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = RUNNING_TEXT

    on_head = on_get


class VersionResource:
    """``/version`` (any method): ``{"version": "<package version>"}``."""

    _BODY = json.dumps({"version": __version__}).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._BODY

    on_head = on_post = on_put = on_delete = on_patch = on_get
