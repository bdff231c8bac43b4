"""Tool gateway: the service a ToolAdapter's Deployment runs (`python -m
switchboard.serving.gateway`). It exposes the adapter's operations at `POST /v1/ops/{name}` and
calls the business system with validation, credentials, timeouts, retries, a circuit breaker and
a rate limit. Reads its `ToolGatewayConfig` from `SWITCHBOARD_GATEWAY_CONFIG`.
"""

from __future__ import annotations

from .app import ConfigError, ToolGateway, create_app, load_config

__all__ = ["ConfigError", "ToolGateway", "create_app", "load_config"]
