"""The one Prometheus call the operator makes: an instant query, answered as a number."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request


class PrometheusError(Exception):
    """Prometheus could not be asked, or answered with an error."""


def query(base_url: str, promql: str, timeout: float = 10.0) -> float | None:
    """The first sample of the instant vector (or scalar) `promql` evaluates to; None when the
    result is empty or not a number (no traffic yet, a division by zero)."""
    url = f"{base_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PrometheusError(f"querying {base_url}: {exc}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{base_url}: {body.get('errorType')}: {body.get('error')}")
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar":
        sample = result
    elif isinstance(result, list) and result:
        sample = result[0].get("value")
    else:
        return None
    try:
        value = float(sample[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value
