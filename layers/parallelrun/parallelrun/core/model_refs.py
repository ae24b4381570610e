"""How a deployment names its model: ``digits``, ``digits:3``, or one model per partition by a
name template (``sales-{store}``) or by tags (``tags:store={store},kind=forecast``). Pure, so the
store checks a reference when a deployment is created and the worker resolves the same one."""

from __future__ import annotations

import re
from dataclasses import dataclass

from parallelrun.core.errors import InputError
from parallelrun.core.partitions import fill, template_fields

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``digits`` → (digits, None = latest); ``digits:3`` → (digits, 3)."""
    name, _, version = ref.partition(":")
    if not MODEL_NAME.match(name) or (version and not version.isdigit()):
        raise InputError(f"model {ref!r}: write NAME or NAME:VERSION, e.g. digits or digits:2")
    return name, int(version) if version else None


def is_per_partition(ref: str) -> bool:
    """``sales-{store}`` (a name template) or ``tags:store={store}`` choose a model per partition."""
    return "{" in ref or ref.startswith("tags:")


@dataclass(frozen=True)
class ModelSelector:
    """How a deployment picks each partition's model: the latest version of the model the
    template names, or of the one model whose tags match (resolved by
    :func:`parallelrun.scoring.selection.resolve` when the mini-batch runs)."""

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


def parse_selector(ref: str) -> ModelSelector:
    """A per-partition model reference, checked: ``sales-{store}`` or ``tags:k={field},k2=v``."""
    selector = ModelSelector(ref.strip())
    sample = {name: "x" for name in selector.fields}
    tags = selector.tags
    if tags is not None:
        well_formed = all(MODEL_NAME.match(k) and v and set("{}") & set(fill(v, sample)) == set()
                          for k, v in tags.items())
    else:
        well_formed = bool(selector.fields) and bool(MODEL_NAME.match(fill(selector.ref, sample)))
    if not well_formed:
        raise InputError(f"model {ref!r}: a model per partition is a name template such as sales-{{store}} or "
                         "tags such as tags:store={store},kind=forecast")
    return selector
