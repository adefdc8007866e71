"""One way to answer a request, and what the flight reports about trying it.

``Route``: an upstream, a deployment and the body to send it. ``Hooks``: the policy seams a
flight calls around each attempt (pacing, balancing, cool-downs; ``policy.UpstreamPolicy``).
``Outcome``/``FailedAttempt``: what the flight learned, for the request log and metrics.
``explain``: what the user can do about well-known upstream errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .completion import dumps
from .config import ModelConfig, UpstreamConfig
from .errors import ProxyError
from .rules import is_daily_quota


@dataclass(slots=True)
class Route:
    """One way to answer: an upstream, a deployment, and the body to send it (encoded when first
    needed: a fallback that is never tried costs nothing)."""

    alias: str
    upstream: UpstreamConfig
    payload: dict[str, Any]
    deployment: ModelConfig | None = None
    _body: bytes | None = None

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = dumps(self.payload)
        return self._body

    @property
    def label(self) -> str:
        model = self.deployment.model if self.deployment else self.alias
        return f"{self.upstream.name}/{model}"


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One upstream attempt that did not answer: the route, its status (0: no connection), a kind."""

    route: str
    status: int
    kind: str


@dataclass(slots=True)
class Outcome:
    """What the flight learned, for the request log and metrics."""

    route: str = ""
    ttfb: float | None = None
    generation_id: str = ""
    failed: list[FailedAttempt] = field(default_factory=list)  # every failed attempt, in order


class Hooks:
    """Policy seams the flight calls; the gateway supplies pacing, balancing and accounting."""

    async def before_attempt(self, route: Route) -> Any:  # returns a token passed to after_attempt
        return None

    def after_attempt(self, route: Route, token: Any, status: int, ttfb: float | None,
                      retry_after: float | None, payload: Any) -> None:
        return None

    def skip(self, route: Route) -> str | None:
        """A reason to skip this route now (cooling down, quota exhausted), or None."""
        return None

    def skip_error(self, route: Route, why: str) -> ProxyError:
        """What the client sees when ``skip`` left no route to try."""
        return ProxyError(503, f"{route.label} is unavailable: {why}")


def explain(err: ProxyError, route: Route) -> ProxyError:
    """Add what the user can do about well-known upstream errors."""
    if is_daily_quota(err.status, err.message):
        err.headers["x-should-retry"] = "false"  # the SDK would retry twice for nothing
    elif err.status == 404 and "tool use" in err.message:
        err.message += (f" (r1proxy: this model has no endpoint with tool support; set tools = \"strip\" "
                        f"for model alias {route.alias!r} in config.toml, or pick a model that supports tools)")
    return err
