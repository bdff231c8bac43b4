"""Building blocks shared by the three kinds: the model base class, CEL rules, common sub-objects.

Every field's docstring becomes its description in the CRD (`kubectl explain`), so write them
for the platform engineer reading the schema, not for the Python reader.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "switchboard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A Kubernetes resource quantity ("500m", "2Gi", 4). Rendered as int-or-string in the CRD.
Quantity = Annotated[
    str | int,
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]

# Kubernetes object names (RFC 1123 subdomain), used for every reference to another object.
ObjectName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]


def list_map(*keys: str) -> dict[str, Any]:
    """Schema extra for a list keyed by some fields: the API server rejects duplicate keys and
    server-side apply merges the list item by item."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class CelRule(BaseModel):
    """One `x-kubernetes-validations` entry: the API server evaluates it (Kubernetes >= 1.25);
    the operator evaluates the same rule itself on servers that ignore it."""

    model_config = ConfigDict(frozen=True)

    rule: str
    message: str


class ApiModel(BaseModel):
    """Base for every spec/status model: camelCase on the wire, docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )

    # Cross-field rules of this object, written in CEL so the API server enforces them.
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.cel_rules:
            target["x-kubernetes-validations"] = [r.model_dump() for r in cls.cel_rules]
        return schema

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a Kubernetes manifest (camelCase, no nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(ApiModel):
    """A key of a Secret in the object's own namespace."""

    name: ObjectName
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253)
    """Key inside the Secret's data."""


class ResourceRequirements(ApiModel):
    """Compute resources of a container, as in a Pod spec."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    """Minimum resources, e.g. `cpu: "1"`, `memory: 2Gi`."""
    limits: dict[str, Quantity] = Field(default_factory=dict)
    """Maximum resources, e.g. `memory: 4Gi`, `nvidia.com/gpu: 1`."""


class Toleration(ApiModel):
    """A Pod toleration, so workers may run on tainted (e.g. GPU) nodes."""

    key: str | None = None
    """Taint key the toleration applies to; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """`Equal` matches key and value; `Exists` matches any value of the key."""
    value: str | None = None
    """Taint value to match when the operator is `Equal`."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; unset matches all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For `NoExecute`: how long the pod stays bound after the taint appears."""


class ReplicaAutoscaling(ApiModel):
    """Ray Serve autoscaling of one deployment, by ongoing requests per replica."""

    cel_rules = (
        CelRule(
            rule="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
        ),
    )

    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas kept running (0 allows scale to zero, with a cold start)."""
    max_replicas: int = Field(default=4, ge=1, le=1000)
    """Most replicas Ray Serve may start."""
    target_ongoing_requests: float = Field(default=2.0, gt=0, le=1000)
    """Ongoing requests per replica that Serve's autoscaler aims for."""


class Condition(ApiModel):
    """A status condition following the Kubernetes API conventions."""

    type: str
    """Condition type, e.g. `Ready`, `RayServiceReady`."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str
    """One-word CamelCase reason for the last transition."""
    message: str
    """Human-readable details, naming the object at fault."""
    last_transition_time: str
    """When the status last changed (RFC 3339)."""
    observed_generation: int
    """The `metadata.generation` this condition was computed from."""


class BaseStatus(ApiModel):
    """Fields every kind reports."""

    observed_generation: int | None = None
    """The `metadata.generation` the operator last reconciled."""
    phase: str | None = None
    """One-word summary for dashboards and Argo CD."""
    conditions: list[Condition] = Field(default_factory=list)
    """Current state: `Ready` summarises, the others say which part is at fault."""
