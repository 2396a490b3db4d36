"""Synthetic models of several shapes that the real llama-server loads.

Each borrows SmolLM2's tokenizer (every ``tokenizer.*`` key of the real GGUF) and gets F16 zero
weights (F16: no CPU repacking, so the weights the engine reports are the file's). The shapes are
the ones the memory estimate has rules for: full multi-head attention, grouped-query attention
at 8:1, a 128-wide head, a Mixtral-style mixture of experts (llama architecture, experts as wide
as ``feed_forward_length``), and Gemma 2's sliding-window attention (every other layer).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np


@dataclasses.dataclass(frozen=True)
class Shape:
    """One synthetic model.

    Attributes:
        name: File stem and test id.
        arch: GGUF architecture.
        n_layer: Blocks.
        n_embd: Embedding width.
        n_head: Query heads.
        n_head_kv: Key/value heads.
        n_ff: Feed-forward width (of each expert for a MoE).
        head_dim: Explicit key/value length, when not ``n_embd / n_head``.
        experts: Experts per layer (0: dense).
        experts_used: Experts per token.
        window: Sliding window (Gemma 2 alternates sliding and full layers).
    """

    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int | None = None
    experts: int = 0
    experts_used: int = 0
    window: int = 0


SHAPES: tuple[Shape, ...] = (
    Shape("mha", "llama", 4, 512, 8, 8, 1408),
    Shape("gqa8", "llama", 4, 512, 16, 2, 1408),
    Shape("head128", "llama", 6, 512, 4, 1, 1408),
    Shape("moe", "llama", 4, 512, 8, 2, 512, experts=8, experts_used=2),
    Shape("swa", "gemma2", 4, 512, 8, 4, 1408, head_dim=64, window=1024),
)


def _copy_tokenizer(writer: gguf.GGUFWriter, source: Path) -> int:
    """Copy every ``tokenizer.*`` key of ``source``; return the vocabulary size."""
    reader = gguf.GGUFReader(source)
    vocab = 0
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            if field.types[1] == gguf.GGUFValueType.STRING:
                values: list[object] = [bytes(field.parts[i]).decode() for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            if field.name == "tokenizer.ggml.tokens":
                vocab = len(values)
            writer.add_array(field.name, values)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(field.name, bytes(field.parts[field.data[0]]).decode())
        else:
            writer.add_key_value(field.name, field.parts[field.data[0]].tolist()[0], kind)
    return vocab


def write_shape(shape: Shape, path: Path, tokenizer_source: Path) -> Path:
    """Write ``shape`` to ``path`` with the tokenizer of ``tokenizer_source``."""
    writer = gguf.GGUFWriter(path, shape.arch)
    writer.add_context_length(8192)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    head = shape.head_dim or shape.n_embd // shape.n_head
    if shape.head_dim:
        writer.add_key_length(head)
        writer.add_value_length(head)
    if shape.experts:
        writer.add_expert_count(shape.experts)
        writer.add_expert_used_count(shape.experts_used)
    if shape.window:
        writer.add_sliding_window(shape.window)
        writer.add_float32(f"{shape.arch}.attn_logit_softcapping", 50.0)
        writer.add_float32(f"{shape.arch}.final_logit_softcapping", 30.0)
    vocab = _copy_tokenizer(writer, tokenizer_source)

    def tensor(name: str, *dims: int, dtype: type = np.float16) -> None:
        writer.add_tensor(name, np.zeros(dims, dtype=dtype))

    embd, ff = shape.n_embd, shape.n_ff
    tensor("token_embd.weight", vocab, embd)
    for i in range(shape.n_layer):
        tensor(f"blk.{i}.attn_norm.weight", embd, dtype=np.float32)
        tensor(f"blk.{i}.attn_q.weight", shape.n_head * head, embd)
        tensor(f"blk.{i}.attn_k.weight", shape.n_head_kv * head, embd)
        tensor(f"blk.{i}.attn_v.weight", shape.n_head_kv * head, embd)
        tensor(f"blk.{i}.attn_output.weight", embd, shape.n_head * head)
        tensor(f"blk.{i}.ffn_norm.weight", embd, dtype=np.float32)
        if shape.window:
            tensor(f"blk.{i}.post_attention_norm.weight", embd, dtype=np.float32)
            tensor(f"blk.{i}.post_ffw_norm.weight", embd, dtype=np.float32)
        if shape.experts:
            tensor(f"blk.{i}.ffn_gate_inp.weight", shape.experts, embd, dtype=np.float32)
            tensor(f"blk.{i}.ffn_gate_exps.weight", shape.experts, ff, embd)
            tensor(f"blk.{i}.ffn_up_exps.weight", shape.experts, ff, embd)
            tensor(f"blk.{i}.ffn_down_exps.weight", shape.experts, embd, ff)
        else:
            tensor(f"blk.{i}.ffn_gate.weight", ff, embd)
            tensor(f"blk.{i}.ffn_up.weight", ff, embd)
            tensor(f"blk.{i}.ffn_down.weight", embd, ff)
    tensor("output_norm.weight", embd, dtype=np.float32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
