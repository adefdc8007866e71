"""What the dashboard keeps on the application: its access rules and its read-only data connection."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web

from r1proxy.appkeys import CLOCK_KEY
from r1proxy.ui import html
from r1proxy.ui.access import SESSION_COOKIE, Access, nonce_of
from r1proxy.ui.data import UiData


@dataclass(slots=True)
class UiState:
    db_path: Path
    access: Access = field(default_factory=Access)
    _data: UiData | None = None

    @property
    def data(self) -> UiData:
        """The read-only connection, opened on first use (the server has created the database by then)."""
        if self._data is None:
            self._data = UiData(self.db_path)
        return self._data

    async def close(self) -> None:
        if self._data is not None:
            await self._data.close()
            self._data = None


# the dashboard's key lives with its owner: appkeys (below the gateway) never imports the UI
UI_KEY = web.AppKey("UI_KEY", UiState)


def now(request: web.Request) -> float:
    """Wall-clock time from the app's one clock (what the gateway and the request log use)."""
    return request.app[CLOCK_KEY].now()


def ui_state(request: web.Request) -> UiState:
    return request.app[UI_KEY]


def csrf(request: web.Request) -> str:
    """The CSRF token to put in this page's forms."""
    return ui_state(request).access.csrf_token(nonce_of(request))


def respond(request: web.Request, title: str, active: str, body: str, *, status: int = 200,
            data: Mapping[str, str] | None = None, charts: bool = False) -> web.Response:
    """A full dashboard page (with a logout button when signed in through the login form)."""
    logout = csrf(request) if SESSION_COOKIE in request.cookies else ""
    text = html.page(title, active, body, data=data, charts=charts, logout_csrf=logout)
    return web.Response(status=status, text=text, content_type="text/html")


def see_other(location: str, **params: str) -> web.Response:
    """A 303 to a dashboard page (after a POST), with query parameters."""
    return web.Response(status=303, headers={"Location": location + (f"?{urlencode(params)}" if params else "")})
