"""Which repository a push may mount each blob from (cross-repository mount candidates)."""

from __future__ import annotations

import dataclasses

from orchestrator.registry.mount import mount_sources
from orchestrator.store.reference import parse_reference


@dataclasses.dataclass(frozen=True)
class Model:
    tags: tuple[str, ...]
    files: tuple[str, ...]


def test_blobs_of_other_repositories_of_the_same_registry_are_candidates() -> None:
    models = [
        Model(("docker.io/ai/smollm2:latest",), ("sha256:hub",)),
        Model(
            ("127.0.0.1:5000/ai/smollm2:v1", "127.0.0.1:5000/team/variant:old"),
            ("sha256:w", "sha256:c"),
        ),
        Model(("127.0.0.1:5000/other/model:v1",), ("sha256:w", "sha256:x")),
        Model(("not a reference!",), ("sha256:bad",)),
    ]
    sources = mount_sources(models, parse_reference("127.0.0.1:5000/team/variant:8k"))
    assert sources == {
        "sha256:w": "ai/smollm2",
        "sha256:c": "ai/smollm2",
        "sha256:x": "other/model",
    }


def test_the_target_repository_itself_and_other_registries_are_not() -> None:
    models = [Model(("127.0.0.1:5000/team/variant:old", "127.0.0.1:6000/ai/x:1"), ("sha256:w",))]
    assert mount_sources(models, parse_reference("127.0.0.1:5000/team/variant:8k")) == {}
