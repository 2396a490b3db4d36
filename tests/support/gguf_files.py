"""Write small synthetic GGUF files for tests, with the ``gguf`` package's GGUFWriter.

Good files come from GGUFWriter (llama.cpp's own writer), so the reader under test is checked
against an independent implementation. Broken files (wrong magic, other versions, big-endian,
absurd counts) are made by patching or hand-packing bytes, which GGUFWriter refuses to write.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

ARCH = "llama"
N_EMBD = 64
N_VOCAB = 32
N_FF = 128
N_HEAD = 4
N_HEAD_KV = 2
CONTEXT_LENGTH = 4096


def llama_tensor_shapes(
    n_layers: int = 2,
) -> dict[str, tuple[tuple[int, ...], gguf.GGMLQuantizationType]]:
    """Return the tensors of the synthetic llama model: name -> (numpy shape, ggml type)."""
    q8 = gguf.GGMLQuantizationType.Q8_0
    f32 = gguf.GGMLQuantizationType.F32
    f16 = gguf.GGMLQuantizationType.F16
    kv_dim = N_EMBD // N_HEAD * N_HEAD_KV
    shapes: dict[str, tuple[tuple[int, ...], gguf.GGMLQuantizationType]] = {
        "token_embd.weight": ((N_VOCAB, N_EMBD), q8),
    }
    for i in range(n_layers):
        shapes[f"blk.{i}.attn_norm.weight"] = ((N_EMBD,), f32)
        shapes[f"blk.{i}.attn_q.weight"] = ((N_EMBD, N_EMBD), q8)
        shapes[f"blk.{i}.attn_k.weight"] = ((kv_dim, N_EMBD), q8)
        shapes[f"blk.{i}.attn_v.weight"] = ((kv_dim, N_EMBD), q8)
        shapes[f"blk.{i}.attn_output.weight"] = ((N_EMBD, N_EMBD), q8)
        shapes[f"blk.{i}.ffn_norm.weight"] = ((N_EMBD,), f32)
        shapes[f"blk.{i}.ffn_gate.weight"] = ((N_FF, N_EMBD), q8)
        shapes[f"blk.{i}.ffn_up.weight"] = ((N_FF, N_EMBD), q8)
        shapes[f"blk.{i}.ffn_down.weight"] = ((N_EMBD, N_FF), f16)
    shapes["output_norm.weight"] = ((N_EMBD,), f32)
    return shapes


def llama_parameter_count(n_layers: int = 2) -> int:
    """Return the number of elements of all tensors of :func:`write_llama_model`."""
    total = 0
    for shape, _ in llama_tensor_shapes(n_layers).values():
        count = 1
        for dim in shape:
            count *= dim
        total += count
    return total


def _add_tensor(
    writer: gguf.GGUFWriter, name: str, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType
) -> None:
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, np.zeros(shape, dtype=np.float16))
    else:
        # Quantized data is raw bytes: GGUFWriter turns the byte shape back into elements.
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        byte_shape = (*shape[:-1], shape[-1] // block * type_size)
        writer.add_tensor(name, np.zeros(byte_shape, dtype=np.uint8), raw_dtype=qtype)


def _add_llama_metadata(writer: gguf.GGUFWriter, n_layers: int, file_type: int | None) -> None:
    writer.add_name("Tiny Llama Test")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_block_count(n_layers)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(N_VOCAB)])
    writer.add_bos_token_id(1)
    writer.add_chat_template("{{ messages[0]['content'] }}<|end|>")


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_llama_model(
    path: Path,
    *,
    n_layers: int = 2,
    file_type: int | None = 7,
    extra: Callable[[gguf.GGUFWriter], None] | None = None,
) -> Path:
    """Write a llama-like model (Q8_0 mostly, F32 norms, one F16 tensor) to ``path``.

    Args:
        path: Where to write.
        n_layers: Number of blocks.
        file_type: ``general.file_type`` (7 = Q8_0), or ``None`` to leave it out.
        extra: Adds more metadata to the writer before it writes.
    """
    writer = gguf.GGUFWriter(path, ARCH)
    _add_llama_metadata(writer, n_layers, file_type)
    if extra is not None:
        extra(writer)
    for name, (shape, qtype) in llama_tensor_shapes(n_layers).items():
        _add_tensor(writer, name, shape, qtype)
    _finish(writer)
    return path


def write_sharded_model(
    directory: Path, name: str = "x", *, shards: int = 3, n_layers: int = 2
) -> list[Path]:
    """Write the llama-like model as ``<name>-0000i-of-0000N.gguf`` shards, return them in order."""
    tensors = llama_tensor_shapes(n_layers)
    per_shard = -(-len(tensors) // shards)
    writer = gguf.GGUFWriter(directory / f"{name}.gguf", ARCH, split_max_tensors=per_shard)
    _add_llama_metadata(writer, n_layers, 7)
    for tensor_name, (shape, qtype) in tensors.items():
        _add_tensor(writer, tensor_name, shape, qtype)
    _finish(writer)
    paths = [directory / f"{name}-{i:05d}-of-{shards:05d}.gguf" for i in range(1, shards + 1)]
    assert all(p.is_file() for p in paths), f"GGUFWriter did not write {shards} shards"
    return paths


def write_odd_metadata(path: Path) -> Path:
    """Write a model whose metadata has every value type, long and nested arrays, odd strings."""
    vt = gguf.GGUFValueType

    def extra(writer: gguf.GGUFWriter) -> None:
        writer.add_uint8("odd.u8", 200)
        writer.add_int8("odd.i8", -100)
        writer.add_uint16("odd.u16", 65000)
        writer.add_int16("odd.i16", -32000)
        writer.add_uint32("odd.u32", 4_000_000_000)
        writer.add_int32("odd.i32", -2_000_000_000)
        writer.add_uint64("odd.u64", 2**64 - 1)
        writer.add_int64("odd.i64", -(2**63))
        writer.add_float32("odd.f32", 0.1)
        writer.add_float64("odd.f64", -2.5e-7)
        writer.add_float32("odd.big", 123456789.0)
        writer.add_bool("odd.true", True)
        writer.add_bool("odd.false", False)
        writer.add_string("odd.html", "<a href='x'>&</a>")
        writer.add_string("odd.unicode", "héllo \u2028 wörld \U0001f600")
        writer.add_key_value("odd.empty", "", vt.STRING)  # add_string drops empty strings
        writer.add_key_value("odd.arr50", list(range(50)), vt.ARRAY, sub_type=vt.INT32)
        writer.add_key_value("odd.arr51", list(range(51)), vt.ARRAY, sub_type=vt.INT32)
        writer.add_key_value("odd.bools", [True, False], vt.ARRAY, sub_type=vt.BOOL)
        writer.add_key_value("odd.floats", [0.5, -1.25], vt.ARRAY, sub_type=vt.FLOAT64)
        writer.add_key_value("odd.strings", ["a", "b,c"], vt.ARRAY, sub_type=vt.STRING)
        writer.add_key_value("odd.nested", [[1, 2], [3]], vt.ARRAY, sub_type=vt.ARRAY)
        writer.add_key_value("odd.bytes", [1, 2, 255], vt.ARRAY, sub_type=vt.UINT8)
        writer.add_key_value("odd.u64s", [2**64 - 1, 0], vt.ARRAY, sub_type=vt.UINT64)

    return write_llama_model(path, extra=extra)


def write_truncated(path: Path, source: Path, keep_bytes: int) -> Path:
    """Write the first ``keep_bytes`` bytes of ``source`` to ``path``."""
    with open(source, "rb") as src:
        path.write_bytes(src.read(keep_bytes))
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` and return the path."""
    path.write_bytes(data)
    return path


def write_not_gguf(path: Path) -> Path:
    """Write a text file that is not GGUF at all."""
    path.write_text("this is not a model, just some text\n" * 4)
    return path


def write_patched(path: Path, source: Path, offset: int, data: bytes) -> Path:
    """Copy ``source`` to ``path`` with ``data`` written over the bytes at ``offset``."""
    raw = bytearray(source.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))
    return path


def write_wrong_magic(path: Path, source: Path, magic: bytes = b"GGUX") -> Path:
    """Copy ``source`` with another 4-byte magic."""
    return write_patched(path, source, 0, magic)


def write_version(path: Path, source: Path, version: int) -> Path:
    """Copy ``source`` with another little-endian GGUF version number."""
    return write_patched(path, source, 4, struct.pack("<I", version))


def write_big_endian(path: Path, source: Path) -> Path:
    """Copy ``source`` with its version field in big-endian byte order."""
    return write_patched(path, source, 4, struct.pack(">I", 3))


def write_raw_header(
    path: Path, *, tensor_count: int, kv_count: int, body: bytes = b"", version: int = 3
) -> Path:
    """Hand-pack a GGUF header with any counts, followed by ``body``."""
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", version, tensor_count, kv_count) + body)
    return path


def packed_string(text: str | bytes) -> bytes:
    """Return a GGUF string: u64 length, then the bytes."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def packed_kv(key: str, vtype: int, payload: bytes) -> bytes:
    """Return one GGUF key/value entry."""
    return packed_string(key) + struct.pack("<I", vtype) + payload
