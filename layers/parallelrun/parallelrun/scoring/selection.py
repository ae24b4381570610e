"""Each partition's model (many-models), resolved against the registry when a mini-batch runs,
from the selector the deployment names (see :mod:`parallelrun.core.model_refs`)."""

from __future__ import annotations

import time
from typing import Any

from parallelrun.aws.config import StackConfig
from parallelrun.core.errors import NotFoundError
from parallelrun.core.model_refs import ModelSelector
from parallelrun.core.partitions import fill
from parallelrun.store import registry
from parallelrun.store.registry import ModelVersion

_RESOLVE_TTL = 60.0  # seconds a worker trusts a partition's resolved model before asking again
_resolved: dict[tuple[str, tuple], tuple[float, ModelVersion]] = {}


def resolve(cfg: StackConfig, selector: ModelSelector, partition: dict[str, Any] | None) -> ModelVersion:
    """The partition's model; :class:`NotFoundError` says which model it looked for."""
    if partition is None:
        raise NotFoundError(f"no partition: the input does not match partition_format, so no model "
                            f"can be chosen by {selector.ref!r}")
    key = (selector.ref, tuple(sorted(partition.items())))
    cached = _resolved.get(key)
    if cached and time.time() - cached[0] < _RESOLVE_TTL:
        return cached[1]
    tags = selector.tags
    if tags is None:
        name = fill(selector.ref, partition)
        try:
            model = registry.get(cfg, name)
        except NotFoundError:
            raise NotFoundError(f"no model for partition {partition}: register one named {name!r}") from None
    else:
        wanted = {k: fill(v, partition) for k, v in tags.items()}
        found = [m for m in registry.list_models(cfg, wanted) if not m.archived]
        names = sorted({m.name for m in found})
        if not names:
            shown = ",".join(f"{k}={v}" for k, v in wanted.items())
            raise NotFoundError(f"no model for partition {partition}: register one tagged {shown}")
        if len(names) > 1:
            raise NotFoundError(f"partition {partition}: models {names} all carry tags {wanted}; "
                                "tag exactly one, or archive the others")
        model = max(found, key=lambda m: m.version)
    _resolved[key] = (time.time(), model)
    return model
