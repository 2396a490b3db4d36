"""How much RAM and VRAM a llama-server runner will hold, from GGUF metadata alone.

A pure function of the model's header and the runner's settings, calibrated against the
``llama-server`` this project builds (its ``-lv 4`` log prints every buffer it allocates):

* **Weights**: the tensor data. Without offload every byte is in RAM (memory-mapped: file pages,
  which the kernel may drop and re-read, but which a running model keeps touching). With
  ``--n-gpu-layers g`` llama.cpp puts the *output* layer on the GPU first, then the last
  ``g - 1`` repeating blocks; the input embeddings always stay on the CPU. A model with tied
  embeddings (no ``output.weight``) gets a GPU copy of ``token_embd`` as its output layer.
* **KV cache**: ``--ctx-size`` is the total across slots, not per slot. With ``--parallel``
  unset (auto: 4 slots) llama-server uses one unified KV buffer of ``ctx`` cells that all slots
  share; with an explicit ``--parallel n`` each of the ``n`` slots gets its own stream of
  ``ctx / n`` cells. Either way a stream is padded up to a multiple of 256 cells. Each cell
  holds, per layer, ``n_head_kv × head_dim_k`` K elements and ``n_head_kv × head_dim_v`` V
  elements of the cache type (``f16`` 2 bytes; ``q8_0`` 34 bytes per 32; ``q4_0`` 18 per 32).
  Sliding-window layers (gemma2/3, cohere2, gpt-oss, ...) keep only
  ``min(stream, window × (slots if unified else 1) + ubatch)`` cells unless ``--swa-full``.
* **Compute buffer**: the worst-case graph for one micro-batch (``ubatch`` = 512 tokens, fewer
  when the context is smaller) plus the logits output buffer. Measured on seven shapes, the graph
  peaks at ``ubatch × 4 × (3·n_ff + 5·n_embd)`` bytes of activations plus the attention mask,
  ``cells × ubatch × 2`` bytes per KV cache; without flash attention add the score matrix,
  ``n_head × cells × ubatch × 4`` bytes (masks are then f32). The output buffer is
  ``n_vocab × 4`` bytes per slot.
* **mmproj**: the projector's file size plus half of it again for the image encoder's graph
  (a guess; the measured footprint replaces it after the first load).
* **Overhead**: a fixed allowance for the process itself (code, libraries, tokenizer, HTTP
  threads): 12-25 MiB were measured on the CPU build, we count 48 MiB. Offloading adds a CUDA
  context on each side (512 MiB of device memory, close to Ollama's 457 MiB per CUDA GPU, and
  256 MiB of host memory for the runtime libraries).
* **Prompt cache**: llama-server keeps finished prompts' KV state in RAM up to ``--cache-ram``
  (default 8192 MiB): an idle runner grows by up to that much after serving. The estimate counts
  the ``prompt_cache_bytes`` the caller passes (the ``--cache-ram`` it gives the runner).

Known gaps, all covered by measuring the real footprint after load: recurrent state of hybrid
models, multi-GPU splits (counted as one pool), and engine versions whose worst-case graph
reserves logits for the whole micro-batch (``n_vocab × ubatch × 4`` bytes more).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence, Sized
from typing import Any, Protocol

from orchestrator.errors import InvalidRequestError
from orchestrator.memory.sizes import MiB

KV_PAD_CELLS = 256
AUTO_PARALLEL_SLOTS = 4
DEFAULT_UBATCH = 512
DEFAULT_BATCH = 2048
RAM_OVERHEAD_BYTES = 48 * MiB
GPU_HOST_OVERHEAD_BYTES = 256 * MiB
VRAM_OVERHEAD_BYTES = 512 * MiB
MMPROJ_COMPUTE_FRACTION = 0.5

# Bytes per block and elements per block of each KV cache type llama-server accepts.
CACHE_TYPES: dict[str, tuple[int, int]] = {
    "f32": (4, 1),
    "f16": (2, 1),
    "bf16": (2, 1),
    "q8_0": (34, 32),
    "q4_0": (18, 32),
    "q4_1": (20, 32),
    "iq4_nl": (18, 32),
    "q5_0": (22, 32),
    "q5_1": (24, 32),
}

# llama.cpp's hard-coded sliding-window patterns (llama-model.cpp set_swa_pattern): every
# n-th layer is full attention, the others slide. Used when the file has no explicit pattern.
SWA_PATTERNS: dict[str, int] = {
    "gemma2": 2,
    "gemma3": 6,
    "cohere2": 4,
    "gpt-oss": 2,
    "exaone4": 4,
}

_BLOCK = re.compile(r"^blk\.(\d+)\.")


class ModelMetadata(Protocol):
    """What :func:`estimate` reads: ``orchestrator.gguf.GGUFInfo`` satisfies it."""

    @property
    def metadata(self) -> Mapping[str, Any]:
        """Return the GGUF key/value metadata."""


class TensorLike(Protocol):
    """A tensor header entry (``orchestrator.gguf.TensorInfo`` satisfies it)."""

    @property
    def name(self) -> str:
        """Return the tensor name (``blk.3.attn_q.weight``)."""

    @property
    def n_bytes(self) -> int | None:
        """Return the tensor data size, ``None`` when its type is unknown."""


@dataclasses.dataclass(frozen=True)
class DeviceMemory:
    """Bytes one side (host RAM or GPU memory) will hold, by purpose.

    Attributes:
        weights: Model tensors.
        kv_cache: KV cache (all layers placed on this side).
        compute_buffer: Worst-case compute graph plus the logits output buffer.
        mmproj: Multimodal projector weights and its compute allowance.
        overhead: Process, runtime libraries, CUDA context.
        prompt_cache: llama-server's RAM prompt cache limit (``--cache-ram``).
    """

    weights: int = 0
    kv_cache: int = 0
    compute_buffer: int = 0
    mmproj: int = 0
    overhead: int = 0
    prompt_cache: int = 0

    @property
    def total(self) -> int:
        """Return the sum of every part."""
        return (
            self.weights
            + self.kv_cache
            + self.compute_buffer
            + self.mmproj
            + self.overhead
            + self.prompt_cache
        )

    def to_dict(self) -> dict[str, int]:
        """Return every part and the total, in bytes."""
        parts = dataclasses.asdict(self)
        parts["total"] = self.total
        return parts


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Predicted footprint of one runner, split between RAM and VRAM.

    Attributes:
        ram: Host memory.
        vram: GPU memory (all zero without offload).
        context_size: Effective context in cells across all slots (after llama.cpp's padding).
        parallel: Number of slots (sequences).
        kv_unified: Whether the slots share one KV buffer.
        flash_attn: Whether flash attention was assumed.
        gpu_layers: Layers offloaded (0 to n_layer + 1, the output layer counting as one).
        per_token_bytes: Growth of the total per extra context cell; used to suggest a
            context size that would fit.
        source: ``"estimate"`` (predicted from the GGUF header) or ``"measured"`` (a footprint
            learned from an earlier run; see ``orchestrator.memory.learned``).
    """

    ram: DeviceMemory
    vram: DeviceMemory
    context_size: int
    parallel: int
    kv_unified: bool
    flash_attn: bool
    gpu_layers: int
    per_token_bytes: int
    source: str = "estimate"

    @property
    def ram_bytes(self) -> int:
        """Return the host memory total."""
        return self.ram.total

    @property
    def vram_bytes(self) -> int:
        """Return the GPU memory total."""
        return self.vram.total

    @property
    def total(self) -> int:
        """Return RAM plus VRAM."""
        return self.ram.total + self.vram.total

    def _sum(self, field: str) -> int:
        return int(getattr(self.ram, field)) + int(getattr(self.vram, field))

    @property
    def weights(self) -> int:
        """Return weight bytes on both sides."""
        return self._sum("weights")

    @property
    def kv_cache(self) -> int:
        """Return KV cache bytes on both sides."""
        return self._sum("kv_cache")

    @property
    def compute_buffer(self) -> int:
        """Return compute buffer bytes on both sides."""
        return self._sum("compute_buffer")

    @property
    def mmproj(self) -> int:
        """Return projector bytes on both sides."""
        return self._sum("mmproj")

    @property
    def overhead(self) -> int:
        """Return overhead bytes on both sides."""
        return self._sum("overhead")

    def to_dict(self) -> dict[str, object]:
        """Return the breakdown for ``GET /models/{ref}`` and ``/engines/ps`` (bytes)."""
        return {
            "ram": self.ram.to_dict(),
            "vram": self.vram.to_dict(),
            "total": self.total,
            "context_size": self.context_size,
            "parallel": self.parallel,
            "kv_unified": self.kv_unified,
            "flash_attn": self.flash_attn,
            "gpu_layers": self.gpu_layers,
            "source": self.source,
        }


# --- metadata access ---------------------------------------------------------------------


def _metadata(info: ModelMetadata | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(info, Mapping):
        return info
    return info.metadata


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _per_layer(value: Any, n_layer: int, default: int) -> list[int]:
    """Expand an integer-or-array key into one value per layer."""
    if isinstance(value, list):
        values = [_int(item) for item in value]
        ints = [item if item is not None else default for item in values]
        return (ints + [ints[-1] if ints else default] * n_layer)[:n_layer]
    single = _int(value)
    return [single if single is not None else default] * n_layer


def _max_int(value: Any, default: int = 0) -> int:
    if isinstance(value, list):
        ints = [v for v in (_int(item) for item in value) if v is not None]
        return max(ints) if ints else default
    single = _int(value)
    return single if single is not None else default


def _swa_layers(meta: Mapping[str, Any], arch: str, n_layer: int) -> list[bool]:
    """Return, per layer, whether it uses sliding-window attention."""
    window = _int(meta.get(f"{arch}.attention.sliding_window")) or 0
    if window <= 0:
        return [False] * n_layer
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list) and pattern and all(isinstance(p, bool) for p in pattern):
        return ([bool(p) for p in pattern] + [False] * n_layer)[:n_layer]
    period = _int(pattern) or SWA_PATTERNS.get(arch, 0)
    if period <= 0:
        # NOTE(memory): a window without a known pattern: count every layer as full
        # attention. That over-estimates, which only makes admission more careful.
        return [False] * n_layer
    # llama.cpp's set_swa_pattern(n): layer il slides when il % n < n - 1 (n = 1: all slide).
    return [period == 1 or (il % period) < (period - 1) for il in range(n_layer)]


def _cache_row_bytes(cache_type: str, elements: int, param: str) -> int:
    try:
        block_bytes, block_elements = CACHE_TYPES[cache_type.lower()]
    except KeyError as ex:
        known = ", ".join(CACHE_TYPES)
        raise InvalidRequestError(
            f"unknown KV cache type '{cache_type}'; use one of {known}", param=param
        ) from ex
    return math.ceil(elements / block_elements) * block_bytes


def _pad(cells: int) -> int:
    return max(KV_PAD_CELLS, math.ceil(cells / KV_PAD_CELLS) * KV_PAD_CELLS)


def _layer_weights(
    tensors: Sequence[TensorLike], n_layer: int, weights_bytes: int
) -> tuple[int, list[int], int, int] | None:
    """Split ``weights_bytes`` into input, per-layer and output parts by tensor sizes.

    Returns ``(input, per_layer, output, tied_output)`` scaled so the parts add up to
    ``weights_bytes`` (shards other than the first are spread proportionally), or ``None``
    when the tensors do not say. ``tied_output`` is the size of the GPU copy of the embeddings
    a model without ``output.weight`` needs.
    """
    per_layer = [0] * n_layer
    input_bytes = output_bytes = token_embd = 0
    has_output_matrix = False
    for tensor in tensors:
        size = getattr(tensor, "n_bytes", None)
        if not isinstance(size, int) or size <= 0:
            continue
        name = tensor.name
        block = _BLOCK.match(name)
        if block is not None and int(block.group(1)) < n_layer:
            per_layer[int(block.group(1))] += size
        elif name.startswith(("output", "cls")):
            output_bytes += size
            has_output_matrix = has_output_matrix or name.startswith("output.weight")
        else:
            input_bytes += size
            if name.startswith("token_embd.weight"):
                token_embd = size
    known = input_bytes + output_bytes + sum(per_layer)
    if known <= 0:
        return None
    scale = weights_bytes / known

    def scaled(value: int) -> int:
        return math.floor(value * scale)

    tied = 0 if has_output_matrix else scaled(token_embd)
    return scaled(input_bytes), [scaled(v) for v in per_layer], scaled(output_bytes), tied


def _ffn_width(meta: Mapping[str, Any], arch: str) -> int:
    """Return the widest feed-forward activation per token (dense or the active experts)."""
    dense = _max_int(meta.get(f"{arch}.feed_forward_length"))
    expert = _max_int(meta.get(f"{arch}.expert_feed_forward_length"))
    used = _max_int(meta.get(f"{arch}.expert_used_count"))
    if not expert and _max_int(meta.get(f"{arch}.expert_count")) > 0:
        # Mixtral-style files (llama architecture) give the experts' width as feed_forward_length.
        expert = dense
    shared = _max_int(meta.get(f"{arch}.expert_shared_feed_forward_length")) * max(
        _max_int(meta.get(f"{arch}.expert_shared_count")), 1 if expert else 0
    )
    return max(dense, expert * used + shared)


# --- the estimate --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Shape:
    """The model dimensions the estimate uses, read once from the metadata."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: list[int]
    n_vocab: int
    n_ctx_train: int
    window: int
    is_swa: list[bool]


def _shape(meta: Mapping[str, Any]) -> _Shape:
    arch = str(meta.get("general.architecture") or "")
    n_layer = max(_int(meta.get(f"{arch}.block_count")) or 0, 0)
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = _int(meta.get(f"{arch}.vocab_size")) or (
        # A list, or the length-only stand-in of a reader that skipped the vocabulary.
        len(tokens) if isinstance(tokens, Sized) and not isinstance(tokens, str) else 0
    )
    return _Shape(
        arch=arch,
        n_layer=n_layer,
        n_embd=_max_int(meta.get(f"{arch}.embedding_length")),
        n_head=_per_layer(meta.get(f"{arch}.attention.head_count"), n_layer, 0),
        n_vocab=n_vocab,
        n_ctx_train=_int(meta.get(f"{arch}.context_length")) or 0,
        window=_int(meta.get(f"{arch}.attention.sliding_window")) or 0,
        is_swa=_swa_layers(meta, arch, n_layer),
    )


def _layer_cell_bytes(
    meta: Mapping[str, Any], shape: _Shape, cache_type_k: str, cache_type_v: str
) -> list[int]:
    """Return, per layer, the K plus V bytes one KV cell holds (0: no KV cache)."""
    arch = shape.arch
    raw_head_kv = meta.get(f"{arch}.attention.head_count_kv")
    # llama.cpp: no head_count_kv means one KV head per query head; 0 marks a layer without
    # attention (the recurrent layers of hybrid models), which then has no KV cache.
    n_head_kv = shape.n_head if raw_head_kv is None else _per_layer(raw_head_kv, shape.n_layer, 0)
    key_len = _int(meta.get(f"{arch}.attention.key_length"))
    value_len = _int(meta.get(f"{arch}.attention.value_length"))
    key_len_swa = _int(meta.get(f"{arch}.attention.key_length_swa")) or key_len
    value_len_swa = _int(meta.get(f"{arch}.attention.value_length_swa")) or value_len
    kv_lora = _int(meta.get(f"{arch}.attention.kv_lora_rank"))
    rope_dims = _int(meta.get(f"{arch}.rope.dimension_count")) or 0
    cell_bytes: list[int] = []
    for il in range(shape.n_layer):
        if kv_lora:
            # MLA (deepseek2-style): one compressed latent plus the rope part per token.
            k_elems, v_elems = kv_lora + rope_dims, kv_lora
        else:
            default_head = shape.n_embd // shape.n_head[il] if shape.n_head[il] else 0
            swa = shape.is_swa[il]
            head_k = (key_len_swa if swa else key_len) or default_head
            head_v = (value_len_swa if swa else value_len) or head_k
            k_elems, v_elems = n_head_kv[il] * head_k, n_head_kv[il] * head_v
        if k_elems <= 0:
            cell_bytes.append(0)
            continue
        cell_bytes.append(
            _cache_row_bytes(cache_type_k, k_elems, "cache_type_k")
            + _cache_row_bytes(cache_type_v, v_elems, "cache_type_v")
        )
    return cell_bytes


def _place_weights(
    tensors: Sequence[TensorLike], n_layer: int, weights_bytes: int, offload: int
) -> tuple[int, int]:
    """Return (RAM, VRAM) weight bytes for ``offload`` layers on the GPU (output layer first)."""
    gpu_layer = [offload >= 1 and il >= n_layer - (offload - 1) for il in range(n_layer)]
    split = _layer_weights(tensors, n_layer, weights_bytes)
    if split is None:
        vram = math.floor(weights_bytes * offload / (n_layer + 1)) if n_layer else 0
        return weights_bytes - vram, vram
    _input, per_layer, output, tied = split
    moved = sum(w for w, on in zip(per_layer, gpu_layer, strict=True) if on)
    if offload >= 1:
        moved += output
    # The tied copy is extra: the CPU keeps token_embd for the input layer.
    return weights_bytes - moved, moved + (tied if offload >= 1 else 0)


def estimate(  # noqa: PLR0913 - mirrors llama-server's memory-relevant flags one to one
    info: ModelMetadata | Mapping[str, Any],
    *,
    context_size: int,
    weights_bytes: int,
    parallel: int = -1,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    gpu_layers: int = 0,
    mmproj_bytes: int = 0,
    flash_attn: bool = True,
    kv_unified: bool | None = None,
    swa_full: bool = False,
    ubatch_size: int = DEFAULT_UBATCH,
    batch_size: int = DEFAULT_BATCH,
    prompt_cache_bytes: int = 0,
    tensors: Sequence[TensorLike] | None = None,
    device_overhead: bool = True,
) -> MemoryEstimate:
    """Estimate the RAM and VRAM a llama-server runner of this model will hold.

    Args:
        info: The GGUF header (``GGUFInfo``) or its metadata as a plain mapping.
        context_size: ``--ctx-size``; 0 or less means the model's trained context, as
            llama-server does.
        weights_bytes: Size of the tensor data (all shards).
        parallel: ``--parallel``; -1 is llama-server's default ("auto": 4 slots, unified KV).
        cache_type_k: ``--cache-type-k``.
        cache_type_v: ``--cache-type-v``; a quantized V cache forces flash attention on.
        gpu_layers: ``--n-gpu-layers``; 0 keeps everything on the CPU, more than ``n_layer``
            (or a negative value) offloads the whole model.
        mmproj_bytes: Size of the multimodal projector file, 0 when there is none.
        flash_attn: Whether flash attention runs (``-fa auto`` turns it on where supported).
        kv_unified: ``--kv-unified``; ``None`` follows llama-server (unified iff parallel is auto).
        swa_full: ``--swa-full``: sliding-window layers keep the whole context.
        ubatch_size: ``--ubatch-size``.
        batch_size: ``--batch-size``.
        prompt_cache_bytes: The ``--cache-ram`` limit given to the runner, in bytes.
        tensors: Tensor infos used to place weights per layer; default ``info.tensors``. Without
            them offloaded weights are split by the fraction of layers offloaded.
        device_overhead: Count a CUDA context on each side when layers are offloaded; ``False``
            when the offload targets are llama.cpp RPC workers only (their runtime lives in
            the worker's process, outside what the worker reports free).

    Raises:
        InvalidRequestError: A cache type llama-server does not know.
    """
    meta = _metadata(info)
    shape = _shape(meta)
    n_layer = shape.n_layer

    # --- context, slots and KV layout (llama_context / llama_kv_cache rules) ---------------
    requested_ctx = max(context_size if context_size > 0 else shape.n_ctx_train, 1)
    n_seq = AUTO_PARALLEL_SLOTS if parallel < 0 else max(parallel, 1)
    unified = (parallel < 0) if kv_unified is None else kv_unified
    n_stream = 1 if unified else n_seq
    stream_cells = _pad(requested_ctx if unified else max(requested_ctx // n_seq, 1))
    n_ubatch = max(min(ubatch_size, batch_size, requested_ctx), 1)
    swa_cells = stream_cells
    if not swa_full and shape.window > 0:
        swa_slots = n_seq if unified else 1
        swa_cells = min(_pad(min(stream_cells, shape.window * swa_slots + n_ubatch)), stream_cells)
    # llama.cpp turns flash attention on by itself for a quantized V cache.
    flash = flash_attn or cache_type_v.lower() not in ("f32", "f16", "bf16")
    cell_bytes = _layer_cell_bytes(meta, shape, cache_type_k, cache_type_v)
    layer_kv = [
        cell_bytes[il] * (swa_cells if shape.is_swa[il] else stream_cells) * n_stream
        for il in range(n_layer)
    ]

    # --- placement: the output layer first, then the last blocks ---------------------------
    offload = n_layer + 1 if gpu_layers < 0 else min(gpu_layers, n_layer + 1)
    on_gpu = [offload >= 1 and il >= n_layer - (offload - 1) for il in range(n_layer)]
    if tensors is None:
        tensors = getattr(info, "tensors", None) or ()
    ram_weights, vram_weights = _place_weights(tensors, n_layer, weights_bytes, offload)
    vram_kv = sum(kv for kv, gpu in zip(layer_kv, on_gpu, strict=True) if gpu)

    # --- compute buffer (calibrated, see the module docstring) -----------------------------
    caches = [stream_cells] if not all(shape.is_swa) else []
    if any(shape.is_swa):
        caches.append(swa_cells)
    mask_bytes = 2 if flash else 4
    output_buffer = shape.n_vocab * 4 * n_seq  # logits of one token per slot
    graph = max(n_ubatch * 4 * (3 * _ffn_width(meta, shape.arch) + 5 * shape.n_embd), output_buffer)
    graph += sum(cells * n_ubatch * mask_bytes for cells in caches)
    if not flash:
        graph += max(shape.n_head, default=0) * max(caches, default=0) * n_ubatch * 4
    gpu = offload >= 1
    if not gpu:
        ram_compute, vram_compute = graph + output_buffer, 0
    elif offload > n_layer:
        # Everything offloaded: the host only stages the input embeddings and the logits.
        ram_compute, vram_compute = output_buffer + n_ubatch * 4 * shape.n_embd * 2, graph
    else:
        # NOTE(memory): with layers on both sides each backend reserves its own graph split.
        ram_compute, vram_compute = graph + output_buffer, graph

    mmproj_total = mmproj_bytes + math.floor(mmproj_bytes * MMPROJ_COMPUTE_FRACTION)
    # Growth per extra context cell: KV of full-attention layers plus their mask row.
    per_token = sum(b for b, swa in zip(cell_bytes, shape.is_swa, strict=True) if not swa)
    per_token += n_ubatch * mask_bytes
    if not flash:
        per_token += max(shape.n_head, default=0) * n_ubatch * 4

    ram = DeviceMemory(
        weights=ram_weights,
        kv_cache=sum(layer_kv) - vram_kv,
        compute_buffer=ram_compute,
        mmproj=0 if gpu else mmproj_total,
        overhead=RAM_OVERHEAD_BYTES + (GPU_HOST_OVERHEAD_BYTES if gpu and device_overhead else 0),
        prompt_cache=max(prompt_cache_bytes, 0),
    )
    vram = DeviceMemory(
        weights=vram_weights,
        kv_cache=vram_kv,
        compute_buffer=vram_compute,
        mmproj=mmproj_total if gpu else 0,
        overhead=VRAM_OVERHEAD_BYTES if gpu and device_overhead else 0,
    )
    return MemoryEstimate(
        ram=ram,
        vram=vram,
        context_size=stream_cells * n_stream,
        parallel=n_seq,
        kv_unified=unified,
        flash_attn=flash,
        gpu_layers=offload,
        per_token_bytes=per_token,
    )
