"""The memory estimate against hand-computed numbers and llama-server's own buffer log.

Every expected figure is written out as arithmetic. Where a shape was also loaded by the real
llama-server (``-lv 4`` prints "KV buffer size", "compute buffer size"), its printed figure is
quoted next to the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from orchestrator.errors import InvalidRequestError
from orchestrator.gguf import read_gguf
from orchestrator.memory.estimate import (
    GPU_HOST_OVERHEAD_BYTES,
    MMPROJ_COMPUTE_FRACTION,
    RAM_OVERHEAD_BYTES,
    VRAM_OVERHEAD_BYTES,
    MemoryEstimate,
    estimate,
)
from tests.support.gguf_files import write_llama_model

MiB = 1024 * 1024


def llama_meta(**overrides: Any) -> dict[str, Any]:
    """Two layers, n_embd 256, n_ff 1024, 8 heads, 2 KV heads (head_dim 32), vocab 1000."""
    meta: dict[str, Any] = {
        "general.architecture": "llama",
        "llama.block_count": 2,
        "llama.context_length": 2048,
        "llama.embedding_length": 256,
        "llama.feed_forward_length": 1024,
        "llama.attention.head_count": 8,
        "llama.attention.head_count_kv": 2,
        "llama.vocab_size": 1000,
    }
    meta.update(overrides)
    return meta


# --- KV cache -------------------------------------------------------------------------------


def test_llama_single_slot_hand_computed() -> None:
    est = estimate(llama_meta(), context_size=1024, weights_bytes=10_000_000, parallel=1)
    cell = 2 * 32 * 2 + 2 * 32 * 2  # K: 2 kv heads x 32 x f16, V the same = 256 B per layer
    assert est.kv_cache == 2 * 1024 * cell == 524_288
    activations = 512 * 4 * (3 * 1024 + 5 * 256)  # ubatch x f32 x (3 n_ff + 5 n_embd)
    mask = 1024 * 512 * 2  # cells x ubatch x f16
    output = 1000 * 4 * 1  # logits: n_vocab x f32 x slots
    assert est.compute_buffer == activations + mask + output == 9_965_472
    assert est.weights == 10_000_000
    assert est.overhead == RAM_OVERHEAD_BYTES
    assert est.ram_bytes == 10_000_000 + 524_288 + 9_965_472 + RAM_OVERHEAD_BYTES
    assert est.vram_bytes == 0
    assert (est.context_size, est.parallel, est.kv_unified) == (1024, 1, False)


def test_ctx_size_is_the_total_shared_by_auto_slots() -> None:
    # parallel -1 (llama-server's default) = 4 slots sharing one unified buffer of ctx cells.
    auto = estimate(llama_meta(), context_size=1024, weights_bytes=0)
    assert (auto.parallel, auto.kv_unified, auto.context_size) == (4, True, 1024)
    assert auto.kv_cache == 2 * 1024 * 256
    assert auto.ram.compute_buffer == 512 * 4 * (3 * 1024 + 5 * 256) + 1024 * 512 * 2 + 1000 * 4 * 4


def test_explicit_parallel_splits_the_context_into_padded_streams() -> None:
    # -np 3 -c 1000: each slot gets 1000 // 3 = 333 cells, padded to 512; 3 streams of 512.
    # (llama-server: "n_ctx = 1536, n_ctx_seq = 512", "33.75 MiB (512 cells, 30 layers, 3/3
    # seqs)" for SmolLM2.)
    est = estimate(llama_meta(), context_size=1000, weights_bytes=0, parallel=3)
    assert est.context_size == 3 * 512
    assert est.kv_cache == 2 * (3 * 512) * 256
    mask = 512 * 512 * 2  # one stream's cells x ubatch x f16
    assert est.compute_buffer == 512 * 4 * (3 * 1024 + 5 * 256) + mask + 1000 * 4 * 3


def test_context_is_padded_to_256_and_small_contexts_shrink_the_ubatch() -> None:
    # -c 100: 256 cells; n_batch = min(ctx, 2048) = 100, so the micro-batch is 100 tokens.
    est = estimate(llama_meta(), context_size=100, weights_bytes=0, parallel=1)
    assert est.context_size == 256
    assert est.compute_buffer == 100 * 4 * (3 * 1024 + 5 * 256) + 256 * 100 * 2 + 1000 * 4


def test_zero_context_means_the_trained_context() -> None:
    est = estimate(llama_meta(), context_size=0, weights_bytes=0, parallel=1)
    assert est.context_size == 2048
    assert est.kv_cache == 2 * 2048 * 256


def test_head_dim_from_key_and_value_length() -> None:
    meta = llama_meta(**{"llama.attention.key_length": 128, "llama.attention.value_length": 64})
    est = estimate(meta, context_size=512, weights_bytes=0, parallel=1)
    assert est.kv_cache == 2 * 512 * (2 * 128 * 2 + 2 * 64 * 2)


def test_missing_head_count_kv_means_one_per_query_head() -> None:
    meta = llama_meta()
    del meta["llama.attention.head_count_kv"]
    est = estimate(meta, context_size=512, weights_bytes=0, parallel=1)
    assert est.kv_cache == 2 * 512 * (8 * 32 * 2 * 2)


def test_per_layer_kv_heads_with_attention_free_layers() -> None:
    # Hybrid models list KV heads per layer; 0 marks a recurrent layer with no KV cache.
    meta = llama_meta(**{"llama.block_count": 4, "llama.attention.head_count_kv": [0, 2, 0, 4]})
    est = estimate(meta, context_size=512, weights_bytes=0, parallel=1)
    assert est.kv_cache == 512 * (2 * 32 * 4 + 4 * 32 * 4)


@pytest.mark.parametrize(
    ("cache_type", "row_bytes"),
    [
        ("f32", 192 * 4),
        ("f16", 192 * 2),
        ("bf16", 192 * 2),
        ("q8_0", 192 // 32 * 34),  # 34 bytes per block of 32
        ("q4_0", 192 // 32 * 18),
        ("q4_1", 192 // 32 * 20),
        ("q5_0", 192 // 32 * 22),
        ("Q5_1", 192 // 32 * 24),
        ("iq4_nl", 192 // 32 * 18),
    ],
)
def test_quantized_cache_types(cache_type: str, row_bytes: int) -> None:
    # SmolLM2's shape: 3 KV heads x 64 = 192 elements per row, 30 layers.
    meta = llama_meta(
        **{
            "llama.block_count": 30,
            "llama.embedding_length": 576,
            "llama.attention.head_count": 9,
            "llama.attention.head_count_kv": 3,
        }
    )
    est = estimate(
        meta, context_size=4096, weights_bytes=0, cache_type_k=cache_type, cache_type_v=cache_type
    )
    assert est.kv_cache == 30 * 4096 * 2 * row_bytes


def test_q8_0_cache_matches_llama_server_log() -> None:
    meta = llama_meta(
        **{
            "llama.block_count": 30,
            "llama.embedding_length": 576,
            "llama.attention.head_count": 9,
            "llama.attention.head_count_kv": 3,
        }
    )
    est = estimate(
        meta, context_size=4096, weights_bytes=0, cache_type_k="q8_0", cache_type_v="q8_0"
    )
    assert est.kv_cache / MiB == pytest.approx(47.81, abs=0.01)  # "CPU KV buffer size = 47.81 MiB"


def test_quantized_v_cache_forces_flash_attention() -> None:
    est = estimate(
        llama_meta(), context_size=512, weights_bytes=0, flash_attn=False, cache_type_v="q8_0"
    )
    assert est.flash_attn


def test_unknown_cache_type_is_a_request_error() -> None:
    with pytest.raises(InvalidRequestError, match="'q3_k'") as info:
        estimate(llama_meta(), context_size=512, weights_bytes=0, cache_type_k="q3_k")
    assert info.value.param == "cache_type_k"


# --- sliding windows -----------------------------------------------------------------------


def gemma3_meta(**overrides: Any) -> dict[str, Any]:
    """12 layers (pattern 6: 10 sliding, 2 full), window 512, 1 KV head of 256, n_embd 640."""
    meta: dict[str, Any] = {
        "general.architecture": "gemma3",
        "gemma3.block_count": 12,
        "gemma3.context_length": 32768,
        "gemma3.embedding_length": 640,
        "gemma3.feed_forward_length": 2048,
        "gemma3.attention.head_count": 4,
        "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 256,
        "gemma3.attention.value_length": 256,
        "gemma3.attention.sliding_window": 512,
        "gemma3.vocab_size": 49152,
    }
    meta.update(overrides)
    return meta


def test_gemma3_sliding_layers_hold_only_the_window() -> None:
    est = estimate(gemma3_meta(), context_size=4096, weights_bytes=0)
    cell = 1 * 256 * 2 * 2  # K + V, one KV head of 256, f16 = 1024 B per layer
    swa_cells = min(4096, 512 * 4 + 512)  # window x 4 unified slots + ubatch = 2560
    assert est.kv_cache == 2 * 4096 * cell + 10 * swa_cells * cell
    # llama-server on this shape: "8.00 MiB (4096 cells, 2 layers)" + "25.00 MiB (2560 cells,
    # 10 layers)".
    assert est.kv_cache == (8 + 25) * MiB
    activations = 512 * 4 * (3 * 2048 + 5 * 640)
    masks = 4096 * 512 * 2 + 2560 * 512 * 2  # one mask per KV cache
    assert est.compute_buffer == activations + masks + 49152 * 4 * 4
    assert est.compute_buffer / MiB == pytest.approx(24.78 + 0.75, abs=0.05)  # compute + output


def test_gemma3_with_separate_slots_and_with_swa_full() -> None:
    # -np 2: streams of 4096 cells; the window is per slot: pad(512 + 512) = 1024 cells.
    split = estimate(gemma3_meta(), context_size=8192, weights_bytes=0, parallel=2)
    assert split.kv_cache == 2 * (2 * 4096 * 1024) + 10 * (2 * 1024 * 1024)  # 16 + 20 MiB
    full = estimate(gemma3_meta(), context_size=8192, weights_bytes=0, swa_full=True)
    assert full.kv_cache == 12 * 8192 * 1024  # 96 MiB: 16 MiB + 80 MiB in the log


def test_gemma2_pattern_is_every_other_layer() -> None:
    meta = {k.replace("gemma3", "gemma2"): v for k, v in gemma3_meta().items()}
    meta.update({"general.architecture": "gemma2", "gemma2.block_count": 4})
    meta["gemma2.attention.sliding_window"] = 128
    est = estimate(meta, context_size=4096, weights_bytes=0, parallel=1)
    # Layers 0 and 2 slide, 1 and 3 are full; one slot: pad(128 + 512 ubatch = 640) = 768 cells.
    assert est.kv_cache == 2 * 4096 * 1024 + 2 * 768 * 1024


def test_explicit_pattern_keys_win_over_the_architecture_table() -> None:
    as_list = gemma3_meta(
        **{"gemma3.attention.sliding_window_pattern": [True, False] * 6}
    )  # 6 sliding, 6 full
    est = estimate(as_list, context_size=4096, weights_bytes=0)
    assert est.kv_cache == 6 * 4096 * 1024 + 6 * 2560 * 1024
    as_period = gemma3_meta(**{"gemma3.attention.sliding_window_pattern": 3})  # 8 sliding, 4 full
    est = estimate(as_period, context_size=4096, weights_bytes=0)
    assert est.kv_cache == 4 * 4096 * 1024 + 8 * 2560 * 1024


def test_window_without_known_pattern_counts_every_layer_as_full() -> None:
    meta = llama_meta(**{"llama.attention.sliding_window": 256})
    est = estimate(meta, context_size=4096, weights_bytes=0, parallel=1)
    assert est.kv_cache == 2 * 4096 * 256


def test_sliding_layers_with_their_own_head_size() -> None:
    meta = gemma3_meta(
        **{"gemma3.attention.key_length_swa": 128, "gemma3.attention.value_length_swa": 128}
    )
    est = estimate(meta, context_size=4096, weights_bytes=0)
    assert est.kv_cache == 2 * 4096 * 1024 + 10 * 2560 * (128 * 2 * 2)


# --- other shapes -------------------------------------------------------------------------


def test_no_flash_attention_adds_the_score_matrix() -> None:
    est = estimate(llama_meta(), context_size=1024, weights_bytes=0, parallel=1, flash_attn=False)
    scores = 8 * 1024 * 512 * 4  # heads x cells x ubatch x f32
    mask = 1024 * 512 * 4  # f32 without flash attention
    assert est.compute_buffer == 512 * 4 * (3 * 1024 + 5 * 256) + mask + scores + 1000 * 4
    assert not est.flash_attn


def test_mla_cache_holds_the_latent_and_rope_part() -> None:
    meta = llama_meta(
        **{
            "general.architecture": "deepseek2",
            "deepseek2.block_count": 2,
            "deepseek2.embedding_length": 256,
            "deepseek2.attention.head_count": 8,
            "deepseek2.attention.head_count_kv": 1,
            "deepseek2.attention.kv_lora_rank": 512,
            "deepseek2.rope.dimension_count": 64,
        }
    )
    est = estimate(meta, context_size=1024, weights_bytes=0, parallel=1)
    assert est.kv_cache == 2 * 1024 * ((512 + 64) * 2 + 512 * 2)


def test_moe_activations_use_the_active_experts() -> None:
    meta = llama_meta(
        **{
            "llama.feed_forward_length": 0,
            "llama.expert_feed_forward_length": 512,
            "llama.expert_used_count": 8,
        }
    )
    est = estimate(meta, context_size=1024, weights_bytes=0, parallel=1)
    assert est.compute_buffer == 512 * 4 * (3 * 512 * 8 + 5 * 256) + 1024 * 512 * 2 + 1000 * 4


def test_mixtral_style_experts_take_their_width_from_feed_forward_length() -> None:
    """A llama-architecture MoE file (Mixtral's layout) has no expert_feed_forward_length; its
    experts are feed_forward_length wide. Loaded by llama-server (4 layers, n_embd 512, n_ff 512,
    8 experts, 2 used, vocab 49152, ctx 4096, 4 slots): "CPU compute buffer size = 15.02 MiB",
    "CPU output buffer size = 0.75 MiB"."""
    meta = llama_meta(
        **{
            "llama.block_count": 4,
            "llama.embedding_length": 512,
            "llama.feed_forward_length": 512,
            "llama.expert_count": 8,
            "llama.expert_used_count": 2,
            "llama.vocab_size": 49152,
        }
    )
    est = estimate(meta, context_size=4096, weights_bytes=0)
    activations = 512 * 4 * (3 * 512 * 2 + 5 * 512)  # the two active experts' width
    mask = 4096 * 512 * 2
    output = 49152 * 4 * 4  # logits of one token per slot, 4 slots
    assert est.compute_buffer == activations + mask + output
    assert est.compute_buffer / MiB == pytest.approx(15.02 + 0.75, abs=0.05)


def test_prompt_cache_and_mmproj_parts() -> None:
    est = estimate(
        llama_meta(), context_size=512, weights_bytes=0, mmproj_bytes=100 * MiB,
        prompt_cache_bytes=256 * MiB,
    )  # fmt: skip
    assert est.ram.mmproj == 100 * MiB + int(100 * MiB * MMPROJ_COMPUTE_FRACTION)
    assert est.ram.prompt_cache == 256 * MiB
    offloaded = estimate(
        llama_meta(), context_size=512, weights_bytes=0, mmproj_bytes=100 * MiB, gpu_layers=99
    )
    assert offloaded.ram.mmproj == 0
    assert offloaded.vram.mmproj == est.ram.mmproj


def test_to_dict_breaks_down_both_sides() -> None:
    body = estimate(llama_meta(), context_size=1024, weights_bytes=5, parallel=1).to_dict()
    ram = body["ram"]
    assert isinstance(ram, dict)
    parts = {"weights", "kv_cache", "compute_buffer", "mmproj", "overhead", "prompt_cache"}
    assert set(ram) == parts | {"total"}
    assert ram["total"] == sum(v for k, v in ram.items() if k != "total")
    assert body["total"] == ram["total"]
    assert body["context_size"] == 1024


# --- GPU offload --------------------------------------------------------------------------


@dataclass(frozen=True)
class T:
    """A tensor entry: name and data size."""

    name: str
    n_bytes: int | None


UNTIED = [
    T("token_embd.weight", 1000),
    T("blk.0.attn_q.weight", 100),
    T("blk.1.attn_q.weight", 100),
    T("output_norm.weight", 10),
    T("output.weight", 490),
    T("blk.1.exotic.weight", None),  # unknown type: ignored
]


def offload_estimate(gpu_layers: int) -> MemoryEstimate:
    """The two-layer llama over :data:`UNTIED` tensors (1700 bytes), one slot, ctx 1024."""
    return estimate(
        llama_meta(),
        context_size=1024,
        weights_bytes=1700,
        parallel=1,
        gpu_layers=gpu_layers,
        tensors=UNTIED,
    )


@pytest.mark.parametrize(
    ("gpu_layers", "vram_weights", "gpu_kv_layers"),
    [
        (0, 0, 0),
        (1, 500, 0),  # llama.cpp offloads the output layer first
        (2, 600, 1),  # then the last repeating block
        (3, 700, 2),
        (99, 700, 2),
        (-1, 700, 2),
    ],
)
def test_offload_places_output_then_last_blocks(
    gpu_layers: int, vram_weights: int, gpu_kv_layers: int
) -> None:
    est = offload_estimate(gpu_layers)
    assert est.vram.weights == vram_weights
    assert est.ram.weights == 1700 - vram_weights
    per_layer_kv = 1024 * 256
    assert est.vram.kv_cache == gpu_kv_layers * per_layer_kv
    assert est.ram.kv_cache == (2 - gpu_kv_layers) * per_layer_kv
    if gpu_layers:
        assert est.vram.overhead == VRAM_OVERHEAD_BYTES
        assert est.ram.overhead == RAM_OVERHEAD_BYTES + GPU_HOST_OVERHEAD_BYTES
        assert est.vram.compute_buffer > 0
    else:
        assert est.vram_bytes == 0


def test_full_offload_leaves_a_small_host_compute_buffer() -> None:
    partial = offload_estimate(2)
    full = offload_estimate(3)
    graph = 512 * 4 * (3 * 1024 + 5 * 256) + 1024 * 512 * 2
    assert partial.vram.compute_buffer == full.vram.compute_buffer == graph
    assert partial.ram.compute_buffer == graph + 1000 * 4
    assert full.ram.compute_buffer == 1000 * 4 + 512 * 4 * 256 * 2  # logits + input staging


def test_tied_embeddings_get_a_gpu_copy_of_token_embd() -> None:
    tied = [
        T("token_embd.weight", 1000),
        T("blk.0.a", 100),
        T("blk.1.a", 100),
        T("output_norm.weight", 10),
    ]
    est = estimate(llama_meta(), context_size=512, weights_bytes=1210, gpu_layers=3, tensors=tied)
    assert est.vram.weights == 100 + 100 + 10 + 1000
    assert est.ram.weights == 1000  # the CPU keeps the embeddings for the input layer


def test_tensor_sizes_are_scaled_to_the_weights_of_all_shards() -> None:
    # Only the first shard's tensors are known; the split keeps their proportions.
    est = estimate(llama_meta(), context_size=512, weights_bytes=3400, gpu_layers=1, tensors=UNTIED)
    assert est.vram.weights == 1000
    assert est.ram.weights == 2400


def test_offload_without_tensor_infos_splits_by_layer_fraction() -> None:
    est = estimate(llama_meta(), context_size=512, weights_bytes=3000, gpu_layers=2, tensors=[])
    assert est.vram.weights == 3000 * 2 // 3  # 2 of n_layer + 1 = 3 offloadable layers
    assert est.ram.weights == 1000


# --- GGUF files ---------------------------------------------------------------------------


def test_synthetic_llama_gguf_file(tmp_path: Path) -> None:
    info = read_gguf(write_llama_model(tmp_path / "tiny.gguf"))
    weights = sum(t.n_bytes or 0 for t in info.tensors)
    est = estimate(info, context_size=512, weights_bytes=weights, parallel=1)
    # tests/support/gguf_files: 2 layers, n_embd 64, 4 heads (head_dim 16), 2 KV heads, n_ff 128.
    assert est.kv_cache == 2 * 512 * (2 * 16 * 2 * 2)
    assert est.compute_buffer == 512 * 4 * (3 * 128 + 5 * 64) + 512 * 512 * 2 + 32 * 4
    assert est.ram.weights == weights
    # Tied embeddings (no output.weight): full offload copies token_embd to the GPU.
    embd = next(t.n_bytes for t in info.tensors if t.name == "token_embd.weight")
    offloaded = estimate(info, context_size=512, weights_bytes=weights, parallel=1, gpu_layers=99)
    assert offloaded.ram.weights == embd
    assert offloaded.vram.weights == weights


def write_qwen_like(path: Path) -> Path:
    """A qwen2-like header: 3 layers, 14 heads, 2 KV heads of 64, n_ff 4864, vocab 151936."""
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_block_count(3)
    writer.add_context_length(32768)
    writer.add_embedding_length(896)
    writer.add_feed_forward_length(4864)
    writer.add_head_count(14)
    writer.add_head_count_kv(2)
    writer.add_vocab_size(151936)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_synthetic_qwen_gguf_file(tmp_path: Path) -> None:
    info = read_gguf(write_qwen_like(tmp_path / "qwen.gguf"))
    est = estimate(info, context_size=8192, weights_bytes=0)
    head_dim = 896 // 14  # 64
    assert est.kv_cache == 3 * 8192 * (2 * head_dim * 2 * 2)
    output = 151936 * 4 * 4  # logits of 4 slots; the activations still dominate the graph
    assert est.compute_buffer == 512 * 4 * (3 * 4864 + 5 * 896) + 8192 * 512 * 2 + output


def write_gemma3_like(path: Path) -> Path:
    writer = gguf.GGUFWriter(path, "gemma3")
    for key, value in gemma3_meta().items():
        if key == "general.architecture":
            continue
        writer.add_uint32(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_synthetic_gemma3_gguf_file_matches_the_dict_estimate(tmp_path: Path) -> None:
    info = read_gguf(write_gemma3_like(tmp_path / "gemma3.gguf"))
    from_file = estimate(info, context_size=4096, weights_bytes=0)
    from_dict = estimate(gemma3_meta(), context_size=4096, weights_bytes=0)
    assert from_file == from_dict
    assert from_file.kv_cache == 33 * MiB


def test_real_smollm2_matches_llama_server_buffers(smollm2_gguf: Path) -> None:
    info = read_gguf(smollm2_gguf)
    weights = sum(t.n_bytes or 0 for t in info.tensors)
    assert weights / MiB == pytest.approx(92.10, abs=0.01)  # "CPU_Mapped model buffer size"
    est = estimate(info, context_size=4096, weights_bytes=weights)
    # 30 layers x 4096 cells x (3 KV heads x 64 x f16) x 2 (K and V): "KV buffer size = 90.00 MiB"
    assert est.kv_cache == 30 * 4096 * (3 * 64 * 2) * 2 == 90 * MiB
    graph = 512 * 4 * (3 * 1536 + 5 * 576) + 4096 * 512 * 2
    assert graph / MiB == pytest.approx(18.64, abs=0.05)  # "CPU compute buffer size = 18.64 MiB"
    assert est.compute_buffer == graph + 49152 * 4 * 4  # + "CPU output buffer size = 0.75 MiB"
    doubled = estimate(info, context_size=8192, weights_bytes=weights)
    assert doubled.kv_cache == 180 * MiB
    mask_growth = doubled.compute_buffer - graph - 49152 * 16
    assert mask_growth / MiB == pytest.approx(22.64 - 18.64, abs=0.05)  # 22.64 MiB at ctx 8192
