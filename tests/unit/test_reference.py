"""Model references: DMR normalisation (spec section 2.1) and rejection of malformed text."""

from __future__ import annotations

import pytest

from orchestrator.errors import InvalidReferenceError
from orchestrator.store.reference import (
    ModelRef,
    familiar_name,
    is_insecure_registry,
    normalize,
    parse_model_id,
    parse_reference,
)

MODEL_ID = "sha256:" + "0123456789abcdef" * 4
HEX = MODEL_ID[7:]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Spec 2.1 examples (DMR's normalize_test.go), fully qualified as stored since PR #536.
        ("gemma3", "docker.io/ai/gemma3:latest"),
        ("gemma3:v1", "docker.io/ai/gemma3:v1"),
        ("myorg/model", "docker.io/myorg/model:latest"),
        ("registry.example.com/model:v1", "registry.example.com/model:v1"),
        ("MyModel", "docker.io/ai/mymodel:latest"),
        ("model:", "docker.io/ai/model:latest"),
        ("hf.co/org/model:Q4_K_M", "huggingface.co/org/model:Q4_K_M"),
        # More spellings.
        ("  ai/smollm2:360M-Q4_K_M  ", "docker.io/ai/smollm2:360M-Q4_K_M"),
        ("docker.io/ai/smollm2", "docker.io/ai/smollm2:latest"),
        ("huggingface.co/Org/Repo:q8_0", "huggingface.co/org/repo:q8_0"),
        ("HF.co.example/Org/Repo", "hf.co.example/org/repo:latest"),
        ("localhost:5000/model", "localhost:5000/model:latest"),
        ("localhost/team/model:v2", "localhost/team/model:v2"),
        ("LOCALHOST:5000/Team/Model", "localhost:5000/team/model:latest"),
        ("127.0.0.1:5000/team/model:v1", "127.0.0.1:5000/team/model:v1"),
        ("[::1]:5000/team/model:v1", "[::1]:5000/team/model:v1"),
        ("registry.local:5000/a/b/c:tag_1.2-x", "registry.local:5000/a/b/c:tag_1.2-x"),
        ("ai/x__y", "docker.io/ai/x__y:latest"),
        ("ai/x---y", "docker.io/ai/x---y:latest"),
        ("abcdef123456", "docker.io/ai/abcdef123456:latest"),
        ("ai/m:" + "T" * 128, "docker.io/ai/m:" + "T" * 128),
    ],
)
def test_normalisation(raw: str, expected: str) -> None:
    ref = parse_reference(raw)
    assert ref.tag_string == expected
    assert ref.digest is None
    assert ref.original == raw.strip()


@pytest.mark.parametrize(
    ("raw", "registry", "repository", "tag", "digest"),
    [
        # DMR's integration list (cmd/cli/commands/integration_test.go).
        ("test-model", "docker.io", "ai/test-model", "latest", None),
        ("test-model:v1", "docker.io", "ai/test-model", "v1", None),
        ("ai/test-model", "docker.io", "ai/test-model", "latest", None),
        ("ai/test-model:v1", "docker.io", "ai/test-model", "v1", None),
        ("registry.local:5000/ai/test-model:v1", "registry.local:5000", "ai/test-model", "v1",
         None),
        ("registry.local:5000/ai/test-model", "registry.local:5000", "ai/test-model", "latest",
         None),
        (f"test-model@{MODEL_ID}", "docker.io", "ai/test-model", "latest", MODEL_ID),
        (f"ai/test-model@{MODEL_ID}", "docker.io", "ai/test-model", "latest", MODEL_ID),
        (f"registry.local:5000/ai/test-model@{MODEL_ID}", "registry.local:5000",
         "ai/test-model", "latest", MODEL_ID),
        (f"ai/test-model:v1@{MODEL_ID}", "docker.io", "ai/test-model", "v1", MODEL_ID),
    ],
)
def test_integration_spellings(
    raw: str, registry: str, repository: str, tag: str, digest: str | None
) -> None:
    assert parse_reference(raw) == ModelRef(
        registry=registry, repository=repository, tag=tag, digest=digest, original=raw
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (MODEL_ID, MODEL_ID),
        (HEX, MODEL_ID),
        (HEX[:12], HEX[:12]),
        (f"  {MODEL_ID}  ", MODEL_ID),
        (HEX[:11], None),
        (HEX[:13], None),
        (HEX.upper(), None),
        ("sha256:" + HEX[:12], None),
        ("ai/model", None),
    ],
)
def test_model_ids(raw: str, expected: str | None) -> None:
    assert parse_model_id(raw) == expected


def test_normalize_keeps_ids_and_qualifies_names() -> None:
    assert normalize(MODEL_ID) == MODEL_ID
    assert normalize(HEX) == MODEL_ID
    assert normalize(HEX[:12]) == HEX[:12]
    assert normalize("smollm2") == "docker.io/ai/smollm2:latest"
    assert normalize(f"ai/x@{MODEL_ID}") == f"docker.io/ai/x:latest@{MODEL_ID}"


@pytest.mark.parametrize(
    ("tag_string", "familiar"),
    [
        ("docker.io/ai/smollm2:latest", "smollm2"),
        ("docker.io/ai/smollm2:360M", "smollm2:360M"),
        ("index.docker.io/myorg/m:latest", "myorg/m"),
        ("ai/old:latest", "old"),
        ("huggingface.co/org/repo:Q4_K_M", "huggingface.co/org/repo:Q4_K_M"),
    ],
)
def test_familiar_names(tag_string: str, familiar: str) -> None:
    assert familiar_name(tag_string) == familiar


def test_reference_properties() -> None:
    ref = parse_reference("hf.co/bartowski/Llama:Q4_K_M")
    assert ref.is_huggingface
    assert ref.name == "huggingface.co/bartowski/llama"
    assert not parse_reference("ai/x").is_huggingface
    assert parse_reference("ai/x").familiar == "x"


@pytest.mark.parametrize(
    ("registry", "extra", "insecure"),
    [
        ("localhost:5000", (), True),
        ("127.0.0.1:5000", (), True),
        ("[::1]:5000", (), True),
        ("registry.local", (), True),
        ("docker.io", (), False),
        ("registry.example.com:5000", (), False),
        ("registry.example.com:5000", ("registry.example.com:5000",), True),
        ("registry.example.com", ("registry.example.com",), True),
    ],
)
def test_insecure_registries(registry: str, extra: tuple[str, ...], insecure: bool) -> None:
    assert is_insecure_registry(registry, extra) is insecure


MALFORMED = [
    "",
    "   ",
    "a b",
    "a\tb",
    "a\nb",
    "ai/x\x00",
    "ai/x\x7f",
    "ai\\x",
    "/abs/path",
    "./relative",
    ".hidden",
    "../up",
    "ai/../x",
    "ai//x",
    "ai/x/",
    "http://registry.example.com/x",
    ":tag",
    "ai/x:-tag",
    "ai/x:.tag",
    "ai/x:" + "t" * 129,
    "a" * 256,
    "ai/x:tag:more",
    "ai/x:t@g",
    "ai/x@",
    "@sha256:" + "a" * 64,
    "ai/x@sha256:abc",
    "ai/x@sha256:" + "A" * 64,
    "ai/x@sha256:" + "a" * 65,
    "ai/x@md5:" + "a" * 32,
    "ai/x@sha256:" + "a" * 64 + "@sha256:" + "b" * 64,
    "ai/x!",
    "ai/x#1",
    "ai/x?q=1",
    "ai/x%20",
    "ai/x*",
    "ai/-x",
    "ai/x-",
    "ai/_x",
    "ai/x..y",
    "ai/x.",
    "ai/x___y",
    "bad_host.example.com/x",
    "-registry.example.com/x",
    "registry.example.com:123456/x",
    "registry.example.com:port/x",
    "ai/ünicode",
    "ai/x:tëst",
    "\u212aelvin",  # KELVIN SIGN lowercases to ASCII 'k'
    "ai/x:\u212a",
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_references_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse_reference(raw)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_reference"
    assert caught.value.message.startswith("invalid model reference")


def test_enough_malformed_cases() -> None:
    assert len(set(MALFORMED)) >= 30
