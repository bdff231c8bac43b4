"""ModelRollout spec → the `Canary` the agent's renderers take."""

from __future__ import annotations

from ..api.modelrollout import ModelRolloutSpec
from .serve_config import Canary


def canary_of(spec: ModelRolloutSpec, weight: int) -> Canary:
    return Canary(
        component=spec.component,
        model_uri=spec.candidate.model_uri,
        quantization=spec.candidate.quantization,
        weight=weight,
        testers=tuple(spec.testers),
        traffic_provider=spec.traffic_provider,
    )


def steps_of(spec: ModelRolloutSpec) -> list[int]:
    """The weights a progressive rollout walks through."""
    progressive = spec.progressive
    assert progressive is not None
    if progressive.steps:
        return list(progressive.steps)
    step = progressive.step_weight or 100
    return [*range(step, progressive.max_weight, step), progressive.max_weight]


def initial_weight(spec: ModelRolloutSpec) -> int:
    """What the operator applies when a rollout starts: the manual weight or the first step
    (used to render a rollout offline, before any status exists)."""
    return spec.weight if spec.weight is not None else steps_of(spec)[0]
