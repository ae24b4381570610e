"""Choosing a model per partition (scoring.selection), without a stack: the registry's lookups
are replaced by a few versions held in memory."""

from __future__ import annotations

import pytest

from parallelrun.core.errors import InputError, NotFoundError
from parallelrun.scoring import selection
from parallelrun.store import registry
from parallelrun.store.registry import ModelVersion
from parallelrun.core import model_refs


def version(name: str, number: int, archived: bool = False, **tags: str) -> ModelVersion:
    return ModelVersion(name, number, "0" * 64, ("m.pkl",), True, tags, archived=archived)


@pytest.fixture
def models(monkeypatch):
    """The registry as a list; each lookup is counted, so the cache can be seen."""
    held: list[ModelVersion] = []
    calls: list[str] = []

    def get(cfg, name, version=None):
        calls.append(name)
        found = [m for m in held if m.name == name and not m.archived]
        if not found:
            raise NotFoundError(f"no model {name!r}")
        return max(found, key=lambda m: m.version)

    def list_models(cfg, tags=None):
        calls.append(f"tags {tags}")
        return [m for m in held if all(m.tags.get(k) == v for k, v in (tags or {}).items())]

    monkeypatch.setattr(registry, "get", get)
    monkeypatch.setattr(registry, "list_models", list_models)
    monkeypatch.setattr(selection, "_resolved", {})
    return held, calls


def test_templates_and_tags_choose_per_partition_and_plain_names_do_not():
    assert model_refs.is_per_partition("sales-{store}")
    assert model_refs.is_per_partition("tags:store={store}")
    assert not model_refs.is_per_partition("digits")
    assert not model_refs.is_per_partition("digits:3")


def test_model_selectors_are_checked_for_their_form():
    assert model_refs.parse_selector("sales-{store}").fields == ("store",)
    assert model_refs.parse_selector("  sales-{store}-{day} ").ref == "sales-{store}-{day}"
    assert model_refs.parse_selector("tags:store={store},kind=forecast").tags == {"store": "{store}",
                                                                                 "kind": "forecast"}
    assert model_refs.parse_selector("sales-{store}").tags is None
    for bad in ("sales-{store", "tags:store", "tags:={store}", "sales {store}", "sales", "tags:k={a}}"):
        with pytest.raises(InputError, match="name template"):
            model_refs.parse_selector(bad)


def test_a_name_template_resolves_to_the_latest_version_of_the_named_model(models):
    held, calls = models
    held += [version("sales-a", 1), version("sales-a", 2), version("sales-b", 1)]
    selector = model_refs.ModelSelector("sales-{store}")
    first, again = selection.resolve(None, selector, {"store": "a"}), selection.resolve(None, selector, {"store": "a"})
    assert (first.name, first.version) == ("sales-a", 2) and again == first
    assert calls == ["sales-a"]  # the second lookup came from the cache
    assert selection.resolve(None, selector, {"store": "b"}).name == "sales-b"
    with pytest.raises(NotFoundError, match="register one named 'sales-c'"):
        selection.resolve(None, selector, {"store": "c"})
    with pytest.raises(NotFoundError, match="does not match partition_format"):
        selection.resolve(None, selector, None)


def test_no_partition_is_refused_even_after_an_empty_partition_was_resolved(models):
    held, _ = models
    held.append(version("north", 1, kind="forecast"))
    selector = model_refs.ModelSelector("tags:kind=forecast")  # needs no field of the partition
    assert selection.resolve(None, selector, {}).name == "north"  # an empty partition: cached under no fields
    with pytest.raises(NotFoundError, match="does not match partition_format"):
        selection.resolve(None, selector, None)  # no partition at all is another thing


def test_a_resolved_model_is_asked_for_again_after_its_time(models, monkeypatch):
    held, calls = models
    held.append(version("sales-a", 1))
    now = [1000.0]
    monkeypatch.setattr(selection.time, "time", lambda: now[0])
    selector = model_refs.ModelSelector("sales-{store}")
    selection.resolve(None, selector, {"store": "a"})
    held.append(version("sales-a", 2))
    now[0] += selection._RESOLVE_TTL - 1
    assert selection.resolve(None, selector, {"store": "a"}).version == 1
    now[0] += 2
    assert selection.resolve(None, selector, {"store": "a"}).version == 2
    assert calls == ["sales-a", "sales-a"]


def test_tags_resolve_to_the_one_model_that_carries_them(models):
    held, _ = models
    held += [version("north", 1, store="n", kind="forecast"), version("north", 3, store="n", kind="forecast"),
             version("north", 4, archived=True, store="n", kind="forecast"), version("other", 1, store="n")]
    selector = model_refs.parse_selector("tags:store={store},kind=forecast")
    chosen = selection.resolve(None, selector, {"store": "n"})
    assert (chosen.name, chosen.version) == ("north", 3)  # the latest not archived
    with pytest.raises(NotFoundError, match="register one tagged store=s,kind=forecast"):
        selection.resolve(None, selector, {"store": "s"})
    held.append(version("rival", 1, store="n", kind="forecast"))
    with pytest.raises(NotFoundError, match=r"models \['north', 'rival'\] all carry tags"):
        selection.resolve(None, model_refs.ModelSelector("tags:kind=forecast,store={store}"), {"store": "n"})
