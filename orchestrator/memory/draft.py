"""The memory a speculative-decoding draft model adds to its runner.

A runner started with ``--model-draft`` loads a second model into the same process: its
weights, a KV cache and a compute buffer of its own, sized by the same context and slots as
the target's (llama-server gives the draft the target's context). The process overhead, the
prompt cache and any projector are the target's and are not counted twice. The measured
footprint of the first run replaces the sum, as for any runner.
"""

from __future__ import annotations

import dataclasses

from orchestrator.memory.estimate import DeviceMemory, MemoryEstimate


def _side(target: DeviceMemory, draft: DeviceMemory) -> DeviceMemory:
    return dataclasses.replace(
        target,
        weights=target.weights + draft.weights,
        kv_cache=target.kv_cache + draft.kv_cache,
        compute_buffer=target.compute_buffer + draft.compute_buffer,
    )


def add_draft(target: MemoryEstimate, draft: MemoryEstimate) -> MemoryEstimate:
    """Return ``target`` with the draft's weights, KV cache and compute buffer added."""
    return dataclasses.replace(
        target,
        ram=_side(target.ram, draft.ram),
        vram=_side(target.vram, draft.vram),
        per_token_bytes=target.per_token_bytes + draft.per_token_bytes,
    )
