"""Speculative decoding with a draft model: the ``_configure`` ``speculative`` object.

DMR's request carries ``{"draft_model": "<ref>", "num_tokens": N, "min_acceptance_rate": R}``
(``docker model configure --speculative-draft-model <ref> --speculative-num-tokens N
--speculative-min-acceptance-rate R``). The runner of the target model then starts llama-server
with ``--model-draft <draft GGUF> --spec-type draft-simple``, plus ``--spec-draft-n-max N`` and
``--spec-draft-p-min R`` when given (this engine build's spellings; the older
``--draft-max``/``--draft-min`` family is gone from it).

``--spec-type draft-simple`` is ours: DMR passes ``--model-draft`` alone, and this engine
build then loads the draft but never drafts with it (its ``--spec-type`` defaults to ``none``;
the answer's ``timings`` carry no ``draft_n``). With the type set, each answer's ``timings``
report ``draft_n`` and ``draft_n_accepted``.

The draft is resolved to a model ID when configured, so a later re-tag of its name does not
swap the draft under a stored configuration; a deleted draft makes the next start fail with a
message that names it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.errors import InvalidRequestError

DRAFT_MODEL_FLAG = "--model-draft"
SPEC_TYPE_ARGS = ("--spec-type", "draft-simple")
DRAFT_MAX_FLAG = "--spec-draft-n-max"
DRAFT_P_MIN_FLAG = "--spec-draft-p-min"
MAX_NUM_TOKENS = 1024
"""Largest ``num_tokens`` accepted: llama.cpp drafts at most this many per step in practice
(its default is 3; DMR's docs use 16); more only burns draft compute on rejected tokens."""


@dataclasses.dataclass(frozen=True)
class SpeculativeSettings:
    """The draft model of a runner and how far it drafts.

    Attributes:
        draft_model: The draft's reference as the user gave it (shown back).
        draft_model_id: Its model ID, resolved when configured (``""`` until resolved).
        num_tokens: ``--spec-draft-n-max``; ``0`` leaves the engine's default.
        min_acceptance_rate: ``--spec-draft-p-min`` (0 to 1); ``0`` leaves the default.
    """

    draft_model: str
    draft_model_id: str = ""
    num_tokens: int = 0
    min_acceptance_rate: float = 0.0

    def to_api(self) -> dict[str, Any]:
        """Return DMR's ``speculative`` object (zero values omitted, as its ``omitempty``)."""
        body: dict[str, Any] = {"draft_model": self.draft_model}
        if self.num_tokens:
            body["num_tokens"] = self.num_tokens
        if self.min_acceptance_rate:
            body["min_acceptance_rate"] = self.min_acceptance_rate
        return body

    def to_json(self) -> dict[str, Any]:
        """Return the form stored in ``runner-configs.json``."""
        return {**self.to_api(), "draft_model_id": self.draft_model_id}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SpeculativeSettings:
        """Rebuild settings stored by :meth:`to_json`, checked as a request is.

        Raises:
            InvalidRequestError: A stored value is no longer accepted.
        """
        parsed = parse_speculative(dict(data))
        if parsed is None:
            raise InvalidRequestError("stored speculative settings are empty")
        return dataclasses.replace(parsed, draft_model_id=str(data.get("draft_model_id") or ""))

    def argv(self, draft_gguf: Path) -> list[str]:
        """Return the llama-server arguments that turn speculative decoding on."""
        args = [DRAFT_MODEL_FLAG, str(draft_gguf), *SPEC_TYPE_ARGS]
        if self.num_tokens > 0:
            args += [DRAFT_MAX_FLAG, str(self.num_tokens)]
        if self.min_acceptance_rate > 0:
            args += [DRAFT_P_MIN_FLAG, f"{self.min_acceptance_rate:.2f}"]
        return args


def _bad(message: str, key: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=f"speculative.{key}")


def parse_speculative(value: object) -> SpeculativeSettings | None:
    """Parse the ``speculative`` object of a ConfigureRequest (``None``/``{}``: none).

    ``draft_model`` is required whenever the object says anything (DMR silently ignores
    ``num_tokens`` without a draft; here that is a mistake worth hearing about).

    Raises:
        InvalidRequestError: Not an object, no draft model, or a number out of range
            (``param`` is ``speculative.<key>``).
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequestError(
            'speculative must be an object such as {"draft_model": "ai/smollm2", '
            f'"num_tokens": 8}}, got {value!r}',
            param="speculative",
        )
    if not value:
        return None
    draft = value.get("draft_model")
    if not isinstance(draft, str) or not draft.strip():
        raise _bad(
            "speculative.draft_model is required: name a local model to draft with, such as "
            f"'ai/smollm2' (got {draft!r})",
            "draft_model",
        )
    tokens = value.get("num_tokens") or 0
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= MAX_NUM_TOKENS:
        raise _bad(
            f"speculative.num_tokens must be a whole number from 1 to {MAX_NUM_TOKENS} (or 0 "
            f"for the engine's default), got {tokens!r}",
            "num_tokens",
        )
    rate = value.get("min_acceptance_rate") or 0.0
    if (
        isinstance(rate, bool)
        or not isinstance(rate, (int, float))
        or not math.isfinite(rate)
        or not 0.0 <= rate <= 1.0
    ):
        raise _bad(
            "speculative.min_acceptance_rate must be a number from 0 to 1 such as 0.8, got "
            f"{rate!r}",
            "min_acceptance_rate",
        )
    return SpeculativeSettings(
        draft_model=draft.strip(), num_tokens=tokens, min_acceptance_rate=float(rate)
    )
