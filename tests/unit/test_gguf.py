"""GGUF header reader and DMR config values, against files written by the gguf package."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from orchestrator import gguf
from orchestrator.errors import InvalidModelFileError

# The fixture files are written with the gguf package (a test dependency; Debian 12 lacks it).
pytest.importorskip("gguf", reason="the gguf package (pip install gguf) writes the test models")
from tests.support import gguf_files


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def llama(model_dir: Path) -> Path:
    return gguf_files.write_llama_model(model_dir / "tiny-llama.gguf")


@pytest.fixture(scope="module")
def odd(model_dir: Path) -> Path:
    return gguf_files.write_odd_metadata(model_dir / "odd.gguf")


@pytest.fixture(scope="module")
def shards(model_dir: Path) -> list[Path]:
    shard_dir = model_dir / "sharded"
    shard_dir.mkdir()
    return gguf_files.write_sharded_model(shard_dir, "x", shards=3)


def test_reads_header_metadata_and_tensor_infos(llama: Path) -> None:
    info = gguf.read_gguf(llama)
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.name == "Tiny Llama Test"
    assert info.get("general.file_type") == 7
    assert info.get("missing.key", "fallback") == "fallback"
    assert info.get("tokenizer.ggml.tokens")[:2] == ["tok0", "tok1"]
    expected = gguf_files.llama_tensor_shapes()
    assert [t.name for t in info.tensors] == list(expected)
    for tensor in info.tensors:
        shape, qtype = expected[tensor.name]
        assert tensor.dims == tuple(reversed(shape))  # GGUF stores the innermost dimension first
        assert tensor.type_name == qtype.name
    assert info.tensors[0].offset == 0
    assert all(t.offset % info.alignment == 0 for t in info.tensors)
    assert info.data_offset % 32 == 0 and info.data_offset >= info.header_bytes
    assert info.parameter_count == gguf_files.llama_parameter_count()
    assert sum(t.n_bytes or 0 for t in info.tensors) <= info.tensor_data_bytes


def test_model_properties(llama: Path) -> None:
    info = gguf.read_gguf(llama)
    assert info.file_type == 7
    assert info.file_type_name == "Q8_0"
    assert info.context_length == gguf_files.CONTEXT_LENGTH
    assert info.block_count == 2
    assert info.embedding_length == gguf_files.N_EMBD
    assert info.feed_forward_length == gguf_files.N_FF
    assert info.head_count == gguf_files.N_HEAD
    assert info.head_count_kv == gguf_files.N_HEAD_KV
    assert info.key_length == info.value_length == gguf_files.N_EMBD // gguf_files.N_HEAD
    assert info.sliding_window is None
    assert info.vocab_size == gguf_files.N_VOCAB
    assert info.arch_get("attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert info.layer_values("attention.head_count_kv") == [gguf_files.N_HEAD_KV] * 2
    assert info.layer_values("no.such.key") == []


def test_per_layer_arrays_and_explicit_lengths(model_dir: Path) -> None:
    def extra(writer: gguf_files.gguf.GGUFWriter) -> None:
        vt = gguf_files.gguf.GGUFValueType
        writer.add_key_value("llama.attention.head_count_kv", [2, 0], vt.ARRAY, sub_type=vt.INT32)
        writer.add_key_length(24)
        writer.add_value_length(20)
        writer.add_sliding_window(512)

    info = gguf.read_gguf(gguf_files.write_llama_model(model_dir / "per-layer.gguf", extra=extra))
    assert info.layer_values("attention.head_count_kv") == [2, 0]
    assert info.head_count_kv == 2
    assert (info.key_length, info.value_length, info.sliding_window) == (24, 20, 512)


def test_version_2_is_read(model_dir: Path, llama: Path) -> None:
    info = gguf.read_gguf(gguf_files.write_version(model_dir / "v2.gguf", llama, 2))
    assert info.version == 2
    assert info.parameter_count == gguf_files.llama_parameter_count()


def test_every_value_type_is_typed(odd: Path) -> None:
    meta = gguf.read_gguf(odd).metadata
    assert meta["odd.u8"] == 200 and meta["odd.i8"] == -100
    assert meta["odd.u16"] == 65000 and meta["odd.i16"] == -32000
    assert meta["odd.u32"] == 4_000_000_000 and meta["odd.i32"] == -2_000_000_000
    assert meta["odd.u64"] == 2**64 - 1 and meta["odd.i64"] == -(2**63)
    assert meta["odd.f32"] == pytest.approx(0.1) and meta["odd.f64"] == -2.5e-7
    assert meta["odd.true"] is True and meta["odd.false"] is False
    assert meta["odd.unicode"] == "héllo \u2028 wörld \U0001f600"
    assert meta["odd.empty"] == ""
    assert meta["odd.nested"] == [[1, 2], [3]]
    assert meta["odd.bools"] == [True, False]
    assert meta["odd.arr51"] == list(range(51))


def test_config_gguf_map_is_stringified_like_dmr(odd: Path) -> None:
    strings = gguf.gguf_model_config([odd])["gguf"]
    assert strings["odd.u64"] == "18446744073709551615"
    assert strings["odd.i64"] == "-9223372036854775808"
    assert strings["odd.f32"] == "0.100000"  # Go %f of float32(0.1)
    assert strings["odd.big"] == "123456792.000000"
    assert strings["odd.f64"] == "-0.000000"
    assert strings["odd.true"] == "true" and strings["odd.false"] == "false"
    assert strings["odd.html"] == "<a href='x'>&</a>"
    assert strings["odd.empty"] == ""
    assert strings["odd.arr50"] == ", ".join(str(i) for i in range(50))
    assert "odd.arr51" not in strings  # more than 50 elements: left out
    assert "tokenizer.ggml.tokens" in gguf.read_gguf(odd).metadata
    assert strings["tokenizer.ggml.tokens"].startswith("tok0, tok1, ")  # 32 tokens: kept
    assert strings["odd.bools"] == "true, false"
    assert strings["odd.floats"] == "0.500000, -1.250000"
    assert strings["odd.strings"] == "a, b,c"
    assert strings["odd.nested"] == ""  # DMR skips nested array elements
    assert strings["odd.bytes"] == "1, 2, 255"
    assert list(strings) == sorted(strings)


def test_format_value_special_floats() -> None:
    assert gguf.format_value(float("nan")) == "NaN"
    assert gguf.format_value(float("inf")) == "+Inf"
    assert gguf.format_value(float("-inf")) == "-Inf"
    assert gguf.format_value(2.5) == "2.500000"
    assert gguf.format_value(list(range(51))) is None


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0"), (183, "183"), (1500, "1.50K"), (1000, "1K"), (134_515_008, "134.52M"),
     (361_821_120, "361.82M"), (7_241_732_096, "7.24B"), (1_230_000_000_000, "1.23T")],
)  # fmt: skip
def test_format_parameters(count: int, text: str) -> None:
    assert gguf.format_parameters(count) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (864, "864B"), (1000, "1KB"), (1024, "1KiB"), (1536, "1.50KiB"),
     (1_000_500, "1MB"), (98_362_432, "93.81MiB"), (268_802_458, "256.35MiB"),
     (4_920_734_720, "4.58GiB")],
)  # fmt: skip
def test_format_model_size_like_gguf_parser(size: int, text: str) -> None:
    assert gguf.format_model_size(size) == text


def test_model_config_single_file(llama: Path) -> None:
    info = gguf.read_gguf(llama)
    config = gguf.gguf_model_config([llama])
    assert list(config) == [
        "format",
        "quantization",
        "parameters",
        "architecture",
        "size",
        "gguf",
        "context_size",
    ]
    assert config["format"] == "gguf"
    assert config["quantization"] == "Q8_0"
    assert config["parameters"] == gguf.format_parameters(gguf_files.llama_parameter_count())
    assert config["architecture"] == "llama"
    assert config["context_size"] == gguf_files.CONTEXT_LENGTH
    assert config["gguf"]["llama.context_length"] == str(gguf_files.CONTEXT_LENGTH)
    # gguf-parser's "size" is the tensor data section, not the whole file.
    assert config["size"] == gguf.format_model_size(info.file_size - info.data_offset)


def test_file_type_is_guessed_when_absent(model_dir: Path) -> None:
    path = gguf_files.write_llama_model(model_dir / "no-ftype.gguf", file_type=None)
    assert gguf.read_gguf(path).file_type_name == "Q8_0"
    assert gguf.gguf_model_config([path])["quantization"] == "Q8_0"


def test_unknown_file_type_number_falls_back_to_tensors(model_dir: Path) -> None:
    path = gguf_files.write_llama_model(model_dir / "ftype-999.gguf", file_type=999)
    assert gguf.read_gguf(path).file_type_name == "Q8_0"


def test_model_without_tensors_or_file_type_is_unknown(model_dir: Path) -> None:
    writer = gguf_files.gguf.GGUFWriter(model_dir / "empty.gguf", "llama")
    gguf_files._finish(writer)
    config = gguf.gguf_model_config([model_dir / "empty.gguf"])
    assert config["quantization"] == "Unknown"
    assert config["parameters"] == "0"
    assert "context_size" not in config


def test_find_shards_from_any_shard(shards: list[Path], llama: Path) -> None:
    assert gguf.find_shards(shards[0]) == shards
    assert gguf.find_shards(shards[1]) == shards
    assert gguf.find_shards(llama) == [llama]


def test_find_shards_names_the_missing_shard(tmp_path: Path) -> None:
    paths = gguf_files.write_sharded_model(tmp_path, "y", shards=3)
    paths[1].unlink()
    with pytest.raises(InvalidModelFileError, match=r"y-00002-of-00003\.gguf") as caught:
        gguf.find_shards(paths[0])
    assert caught.value.status == 400


def test_sharded_config_sums_all_shards(shards: list[Path], llama: Path) -> None:
    config = gguf.gguf_model_config(shards)
    assert config["parameters"] == gguf.gguf_model_config([llama])["parameters"]
    assert config["quantization"] == "Q8_0"
    assert config["context_size"] == gguf_files.CONTEXT_LENGTH
    assert config["gguf"]["split.count"] == "3"
    assert "split.no" not in config["gguf"]
    infos = [gguf.read_gguf(p) for p in shards]
    assert sum(len(i.tensors) for i in infos) == len(gguf_files.llama_tensor_shapes())
    assert infos[1].architecture == ""  # later shards carry only split.* metadata


def test_tensor_data_is_never_read(model_dir: Path, llama: Path) -> None:
    # A file with 4 GiB of (sparse) data after the tensors parses at header speed.
    sparse = model_dir / "sparse.gguf"
    sparse.write_bytes(llama.read_bytes())
    with open(sparse, "r+b") as fileobj:
        fileobj.truncate(4 << 30)
    start = time.monotonic()
    info = gguf.read_gguf(sparse)
    assert time.monotonic() - start < 2.0
    assert info.file_size == 4 << 30


def _broken_file(kind: str, directory: Path, source: Path) -> Path:
    path = directory / f"{kind}.gguf"
    size = source.stat().st_size
    makers = {
        "text": lambda: gguf_files.write_not_gguf(path),
        "two-bytes-text": lambda: gguf_files.write_bytes(path, b"no"),
        "magic": lambda: gguf_files.write_wrong_magic(path, source),
        "ggjt": lambda: gguf_files.write_wrong_magic(path, source, b"tjgg"),
        "v1": lambda: gguf_files.write_version(path, source, 1),
        "v4": lambda: gguf_files.write_version(path, source, 4),
        "big-endian": lambda: gguf_files.write_big_endian(path, source),
        "empty": lambda: gguf_files.write_truncated(path, source, 0),
        "two-bytes": lambda: gguf_files.write_truncated(path, source, 2),
        "cut-header": lambda: gguf_files.write_truncated(path, source, 10),
        "cut-metadata": lambda: gguf_files.write_truncated(path, source, 200),
        "cut-data": lambda: gguf_files.write_truncated(path, source, size - 100),
    }
    return makers[kind]()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "is not a GGUF file"),
        ("two-bytes-text", "is not a GGUF file"),
        ("magic", "is not a GGUF file"),
        ("ggjt", "legacy GGJT format"),
        ("v1", "version 1; only versions 2 and 3"),
        ("v4", "version 4; only versions 2 and 3"),
        ("big-endian", "big-endian"),
        ("empty", "is empty"),
        ("two-bytes", "truncated: the file has only 2 bytes"),
        ("cut-header", "truncated: the header"),
        ("cut-metadata", "truncated"),
        ("cut-data", "truncated: tensor"),
    ],
)
def test_invalid_files_are_clear_errors(
    model_dir: Path, llama: Path, kind: str, message: str
) -> None:
    path = _broken_file(kind, model_dir, llama)
    with pytest.raises(InvalidModelFileError, match=message) as caught:
        gguf.read_gguf(path)
    assert str(path) in caught.value.message
    assert caught.value.status == 400 and caught.value.code == "invalid_model_file"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFileError, match="does not exist"):
        gguf.read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(InvalidModelFileError, match="is a directory"):
        gguf.read_gguf(tmp_path)


U32, STRING, ARRAY = 4, 8, 9
_kv = gguf_files.packed_kv
_name = gguf_files.packed_string("t")
CORRUPT_HEADERS = {
    # name: (tensor count, kv count, body after the counts, expected message)
    "kv-count": (0, 2**60, b"", "claims 1152921504606846976 metadata entries"),
    "tensor-count": (2**40, 0, b"", "1099511627776 tensors"),
    "key-length": (0, 1, struct.pack("<Q", 2**62) + b"x" * 64, "metadata key 0 .* claims"),
    "string-length": (0, 1, _kv("k", STRING, struct.pack("<Q", 2**50)), "metadata 'k' .* claims"),
    "array-length": (0, 1, _kv("a", ARRAY, struct.pack("<IQ", U32, 2**40)), "array of 10995116"),
    "value-type": (0, 1, _kv("t", 77, b"\0" * 16), "unknown value type 77"),
    "array-type": (0, 1, _kv("t", ARRAY, struct.pack("<IQ", 99, 1)), "unknown value type 99"),
    "deep": (0, 1, _kv("d", ARRAY, struct.pack("<IQ", ARRAY, 1) * 12 + b"\0" * 64), "nests"),
    "dims": (1, 0, _name + struct.pack("<I", 5) + b"\0" * 64, "5 dimensions"),
    "block": (1, 0, _name + struct.pack("<IQIQ", 1, 33, 8, 0), "not a multiple"),
    "align": (0, 1, _kv("general.alignment", U32, struct.pack("<I", 48)), "power of two"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT_HEADERS))
def test_corrupt_headers_fail_fast(tmp_path: Path, name: str) -> None:
    tensors, kvs, body, message = CORRUPT_HEADERS[name]
    path = gguf_files.write_raw_header(
        tmp_path / f"{name}.gguf", tensor_count=tensors, kv_count=kvs, body=body
    )
    start = time.monotonic()
    with pytest.raises(InvalidModelFileError, match=message):
        gguf.read_gguf(path)
    assert time.monotonic() - start < 1.0


def test_invalid_utf8_is_replaced_per_byte_like_go(tmp_path: Path) -> None:
    body = gguf_files.packed_kv("s", STRING, gguf_files.packed_string(b"a\xe2\x82b\xff"))
    path = gguf_files.write_raw_header(
        tmp_path / "utf8.gguf", tensor_count=0, kv_count=1, body=body
    )
    assert gguf.read_gguf(path).metadata["s"] == "a\ufffd\ufffdb\ufffd"


def test_real_smollm2_config(smollm2_gguf: Path) -> None:
    start = time.monotonic()
    config = gguf.gguf_model_config([smollm2_gguf])
    assert time.monotonic() - start < 5.0
    assert config["architecture"] == "llama"
    assert config["quantization"] == "Q4_1"
    assert config["parameters"] == "134.52M"
    assert config["size"] == "92.10MiB"
    assert config["context_size"] == 8192
    assert config["gguf"]["general.name"] == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert config["gguf"]["llama.attention.layer_norm_rms_epsilon"] == "0.000010"
    assert "tokenizer.ggml.tokens" not in config["gguf"]  # 49152 entries: left out
    info = gguf.read_gguf(smollm2_gguf)
    assert (info.block_count, info.head_count, info.head_count_kv, info.key_length) == (
        30,
        9,
        3,
        64,
    )
    assert len(info.tensors) == 272


def test_long_arrays_are_skipped_but_the_rest_is_read_the_same(odd: Path) -> None:
    full = gguf.read_gguf(odd)
    short = gguf.read_gguf(odd, max_array_elements=2)
    # Everything after the skipped arrays (later keys, tensor infos) is where it was.
    assert short.tensors == full.tensors and short.header_bytes == full.header_bytes
    for key, value in full.metadata.items():
        if isinstance(value, list) and len(value) > 2:
            skipped = short.metadata[key]
            assert isinstance(skipped, gguf.SkippedArray) and len(skipped) == len(value)
        else:
            assert short.metadata[key] == value
    assert short.metadata["tokenizer.ggml.tokens"] == gguf.SkippedArray(gguf.ValueType.STRING, 32)
    assert short.metadata["odd.nested"] == [[1, 2], [3]]  # two elements: decoded
    assert gguf.read_gguf(odd, max_array_elements=0).metadata["odd.nested"] == gguf.SkippedArray(
        gguf.ValueType.ARRAY, 2
    )


def test_skipped_strings_are_still_checked_against_the_file(tmp_path: Path) -> None:
    strings = gguf_files.packed_string("ok") + struct.pack("<Q", 2**40)
    body = gguf_files.packed_kv("a", ARRAY, struct.pack("<IQ", STRING, 2) + strings)
    path = gguf_files.write_raw_header(tmp_path / "bad.gguf", tensor_count=0, kv_count=1, body=body)
    with pytest.raises(InvalidModelFileError, match="metadata 'a' .* claims"):
        gguf.read_gguf(path, max_array_elements=1)


def test_skipping_crosses_the_read_buffer(tmp_path: Path) -> None:
    # More than one 1 MiB read chunk of strings, then a key that must still be found.
    words = [f"token-{i:06d}" for i in range(120_000)]
    strings = b"".join(gguf_files.packed_string(word) for word in words)
    body = gguf_files.packed_kv("v", ARRAY, struct.pack("<IQ", STRING, len(words)) + strings)
    body += gguf_files.packed_kv("after", U32, struct.pack("<I", 7))
    path = gguf_files.write_raw_header(tmp_path / "big.gguf", tensor_count=0, kv_count=2, body=body)
    meta = gguf.read_gguf(path, max_array_elements=100).metadata
    assert meta["v"] == gguf.SkippedArray(gguf.ValueType.STRING, 120_000) and meta["after"] == 7
    assert gguf.read_gguf(path).metadata["v"] == words


def test_real_smollm2_header_without_the_vocabulary(smollm2_gguf: Path) -> None:
    info = gguf.read_gguf(smollm2_gguf, max_array_elements=4096)
    assert len(info.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(info.metadata["tokenizer.ggml.merges"]) == 48900
    assert len(info.tensors) == 272 and info.block_count == 30
