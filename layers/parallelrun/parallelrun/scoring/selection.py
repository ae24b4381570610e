"""How a deployment picks each partition's model (many-models): a name template such as
``sales-{store}`` or tags such as ``tags:store={store}``, checked when the deployment is made and
resolved against the registry when a mini-batch runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from parallelrun.aws.config import StackConfig
from parallelrun.core.errors import InputError, NotFoundError
from parallelrun.core.partitions import fill, template_fields
from parallelrun.store import registry
from parallelrun.store.registry import ModelVersion


_RESOLVE_TTL = 60.0  # seconds a worker trusts a partition's resolved model before asking again
_resolved: dict[tuple[str, tuple], tuple[float, ModelVersion]] = {}


def is_per_partition(ref: str) -> bool:
    """``sales-{store}`` (a name template) or ``tags:store={store}`` choose a model per partition."""
    return "{" in ref or ref.startswith("tags:")


@dataclass(frozen=True)
class ModelSelector:
    """How a deployment picks each partition's model, resolved when the mini-batch runs: the
    latest version of the model the template names, or of the one model whose tags match."""

    ref: str

    @property
    def tags(self) -> dict[str, str] | None:
        if not self.ref.startswith("tags:"):
            return None
        pairs = (pair.partition("=") for pair in self.ref[len("tags:"):].split(","))
        return {key.strip(): value.strip() for key, _, value in pairs}

    @property
    def fields(self) -> tuple[str, ...]:
        return template_fields(self.ref)

    def resolve(self, cfg: StackConfig, partition: dict[str, Any] | None) -> ModelVersion:
        """The partition's model; :class:`NotFoundError` says which model it looked for."""
        key = (self.ref, tuple(sorted((partition or {}).items())))
        cached = _resolved.get(key)
        if cached and time.time() - cached[0] < _RESOLVE_TTL:
            return cached[1]
        if partition is None:
            raise NotFoundError(f"no partition: the input does not match partition_format, so no model "
                                f"can be chosen by {self.ref!r}")
        tags = self.tags
        if tags is None:
            name = fill(self.ref, partition)
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


def parse_selector(ref: str) -> ModelSelector:
    """A per-partition model reference, checked: ``sales-{store}`` or ``tags:k={field},k2=v``."""
    selector = ModelSelector(ref.strip())
    sample = {name: "x" for name in selector.fields}
    tags = selector.tags
    if tags is not None:
        well_formed = all(registry._NAME.match(k) and v and set("{}") & set(fill(v, sample)) == set()
                          for k, v in tags.items())
    else:
        well_formed = bool(selector.fields) and bool(registry._NAME.match(fill(selector.ref, sample)))
    if not well_formed:
        raise InputError(f"model {ref!r}: a model per partition is a name template such as sales-{{store}} or "
                         "tags such as tags:store={store},kind=forecast")
    return selector
