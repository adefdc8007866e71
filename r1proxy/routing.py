"""Which upstream answers a model name: alias → deployments → routes (with fallbacks).

An alias from ``[[models]]`` has one or more deployments; any other model id is a pass-through
deployment of the default upstream (an object like the others, with no template), unless
``server.allow_unknown_models`` is off. ``routes`` lists the ways to answer one request:
the alias's deployments in the balancer's order, then each fallback alias's.
"""

from __future__ import annotations

from typing import Any

from .config import Config, KeyConfig, ModelConfig
from .errors import ProxyError
from .policy import UpstreamPolicy
from .route import Route
from .session import with_session_id
from .templates import prepare


def pass_through(model: str, upstream: str) -> ModelConfig:
    """A model id sent upstream unchanged: no defaults, overrides or history rewriting."""
    return ModelConfig(name=model, upstream=upstream, model=model, strip_reasoning_from_history=False)


class Router:
    def __init__(self, config: Config, policy: UpstreamPolicy) -> None:
        self.config = config
        self.policy = policy
        self.aliases = config.aliases()

    def resolve(self, name: str) -> list[ModelConfig]:
        """The deployments of a model alias, or one pass-through deployment (raises 404 when unknown
        model ids are not allowed)."""
        deployments = self.aliases.get(name)
        if deployments:
            return list(deployments)
        if not self.config.server.allow_unknown_models:
            known = ", ".join(sorted(self.aliases))
            raise ProxyError(404, f"Unknown model {name!r}; configured models: {known}", code="model_not_found",
                             param="model")
        return [pass_through(name, self.config.server.default_upstream)]

    @staticmethod
    def allowed(name: str, key: KeyConfig) -> None:
        if key.models and name not in key.models:
            raise ProxyError(403, f"This key may not use model {name!r}", code="model_not_allowed", param="model")

    def routes(self, alias: str, deployments: list[ModelConfig], body: dict[str, Any]) -> list[Route]:
        """Deployments of the alias (balancer's order), then each fallback alias's deployments."""
        out = [self.route(alias, d, body) for d in self.policy.order(alias, deployments)]
        for fb in deployments[0].fallbacks:
            out.extend(self.route(fb, d, body) for d in self.policy.order(fb, self.aliases.get(fb, [])))
        return out

    def route(self, alias: str, deployment: ModelConfig, body: dict[str, Any]) -> Route:
        up = self.config.upstreams[deployment.upstream]
        # session_id (OpenRouter sticky routing) only upstream: the cache key is computed without it
        return Route(alias, up, with_session_id(prepare(body, deployment, deployment.model), up), deployment)
