"""Read GGUF headers: key/value metadata and tensor infos, never tensor data.

The reader follows the GGUF specification (versions 2 and 3, little-endian) with the standard
library's ``struct`` only. It reads the file through one buffer refilled in 1 MiB chunks and
checks every count and length against the bytes the file still has before it allocates
anything, so a corrupt or hostile header fails fast with :class:`InvalidModelFileError` instead
of a ``MemoryError``. Tensor extents are checked against the file size, which catches files cut
short during a download.

:func:`gguf_model_config` turns one model (all its shards) into the ``config`` object of DMR's
config blob (spec section 3.3), reproducing what DMR's builder gets from gguf-parser-go.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import struct
from pathlib import Path
from typing import IO, Any

from orchestrator.errors import InvalidModelFileError
from orchestrator.memory.sizes import format_bytes

SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses tensors with more
MAX_GGUF_ARRAY_ELEMENTS = 50  # DMR leaves longer arrays out of the config's "gguf" map

_CHUNK_BYTES = 1 << 20
_MAX_KEY_BYTES = 65535
_MAX_STRING_BYTES = 64 << 20
_MAX_ARRAY_ELEMENTS = 1 << 22  # 16x the largest vocabularies in use
_MAX_ARRAY_DEPTH = 8
_MAGIC = b"GGUF"
_LEGACY_MAGICS = {b"lmgg": "GGML", b"fmgg": "GGMF", b"tjgg": "GGJT"}
_SHARD_NAME = re.compile(r"^(?P<prefix>.*)-(?P<shard>\d{5})-of-(?P<total>\d{5})\.gguf$")


class ValueType(enum.IntEnum):
    """GGUF metadata value types."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMATS = {
    ValueType.UINT8: "B", ValueType.INT8: "b", ValueType.UINT16: "H", ValueType.INT16: "h",
    ValueType.UINT32: "I", ValueType.INT32: "i", ValueType.FLOAT32: "f", ValueType.BOOL: "?",
    ValueType.UINT64: "Q", ValueType.INT64: "q", ValueType.FLOAT64: "d",
}  # fmt: skip
_SCALARS = {vtype: struct.Struct("<" + fmt) for vtype, fmt in _SCALAR_FORMATS.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<IQQ")
_ARRAY_HEAD = struct.Struct("<IQ")
_TENSOR_TAIL = struct.Struct("<IQ")

# ggml_type id -> (name, elements per block, bytes per block); ggml/include/ggml.h.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4),
    27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}  # fmt: skip

# general.file_type -> name; llama.cpp's enum llama_ftype without the LLAMA_FTYPE_MOSTLY_ prefix.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0", 8: "Q5_0",
    9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
    15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS",
    21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S",
    27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    33: "Q4_0_4_4", 34: "Q4_0_4_8", 35: "Q4_0_8_8", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
    39: "NVFP4", 40: "Q1_0",
}  # fmt: skip
UNKNOWN_FILE_TYPE = "Unknown"

# Dominant tensor type -> file type, for files without general.file_type (gguf-parser's guess).
_FILE_TYPE_BY_TENSOR = {
    1: 1, 2: 2, 3: 3, 6: 8, 7: 9, 8: 7, 10: 10, 14: 18, 16: 19, 18: 23, 19: 24, 20: 25,
    22: 29, 23: 30, 29: 31, 30: 32, 34: 36, 35: 37, 39: 38,
}  # fmt: skip


class _FormatError(Exception):
    """A header defect, described in words that follow the file name."""


@dataclasses.dataclass(frozen=True)
class SkippedArray:
    """A metadata array read past without decoding it (``read_gguf(max_array_elements=...)``).

    Its structure was checked (every string's length against the file) but its elements were
    not built: a tokenizer's 50,000 to 250,000 strings cost a Python loop each, which readers
    that only need the model's shape do not pay.

    Attributes:
        element_type: The type of its elements.
        count: How many elements it has.
    """

    element_type: ValueType
    count: int

    def __len__(self) -> int:
        """Return the number of elements, as the decoded list would."""
        return self.count


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry.

    Attributes:
        name: Tensor name, e.g. ``blk.0.attn_q.weight``.
        dims: Dimensions in GGUF order (innermost first).
        ggml_type: ggml type id (see :data:`GGML_TYPES`).
        offset: Offset of the data, relative to the start of the file's tensor data section.
    """

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        """Return the number of elements (parameters) of the tensor."""
        return math.prod(self.dims) if self.dims else 0

    @property
    def type_name(self) -> str:
        """Return the ggml type name, e.g. ``Q4_K``."""
        known = GGML_TYPES.get(self.ggml_type)
        return known[0] if known else f"TYPE_{self.ggml_type}"

    @property
    def n_bytes(self) -> int | None:
        """Return the size of the tensor's data, or ``None`` for an unknown ggml type."""
        known = GGML_TYPES.get(self.ggml_type)
        if known is None:
            return None
        return self.n_elements // known[1] * known[2]


@dataclasses.dataclass(frozen=True)
class GGUFInfo:
    """Header of one GGUF file.

    Attributes:
        path: The file that was read.
        version: GGUF format version (2 or 3).
        metadata: Every key/value pair, typed: ``int``, ``float``, ``bool``, ``str`` or
            ``list`` (nested for arrays of arrays); a :class:`SkippedArray` for an array the
            caller asked not to decode.
        tensors: Tensor infos, in file order.
        header_bytes: Offset where the tensor infos end (before alignment padding).
        data_offset: Offset of the tensor data section (``header_bytes`` aligned).
        file_size: Size of the file in bytes.
    """

    path: Path
    version: int
    metadata: dict[str, Any] = dataclasses.field(repr=False)
    tensors: tuple[TensorInfo, ...] = dataclasses.field(repr=False)
    header_bytes: int
    data_offset: int
    file_size: int

    def get(self, key: str, default: Any = None) -> Any:
        """Return the metadata value of ``key``, or ``default`` when absent."""
        return self.metadata.get(key, default)

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        """Return ``<architecture>.<suffix>`` (e.g. ``attention.head_count``), or ``default``."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    def layer_values(self, suffix: str) -> list[int]:
        """Return a per-layer integer key as one value per block.

        Some architectures store e.g. ``attention.head_count_kv`` as an array with one entry
        per layer; others store one integer for all. Returns ``[]`` when the key is absent.
        """
        value = self.arch_get(suffix)
        if isinstance(value, list):
            return [int(v) for v in value if isinstance(v, int)]
        if isinstance(value, int) and not isinstance(value, bool):
            return [value] * (self.block_count or 0)
        return []

    def _arch_int(self, suffix: str) -> int | None:
        return _as_int(self.arch_get(suffix))

    @property
    def architecture(self) -> str:
        """Return ``general.architecture`` (``""`` when absent)."""
        value = self.metadata.get("general.architecture")
        return value.strip() if isinstance(value, str) else ""

    @property
    def name(self) -> str:
        """Return ``general.name`` (``""`` when absent)."""
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else ""

    @property
    def alignment(self) -> int:
        """Return the tensor data alignment (``general.alignment``, default 32)."""
        return _as_int(self.metadata.get("general.alignment")) or DEFAULT_ALIGNMENT

    @property
    def file_type(self) -> int | None:
        """Return ``general.file_type`` (llama.cpp's ``llama_ftype``), or ``None``."""
        return _as_int(self.metadata.get("general.file_type"))

    @property
    def file_type_name(self) -> str:
        """Return the quantization name, e.g. ``Q4_K_M``, guessed from tensors if needed."""
        known = FILE_TYPES.get(self.file_type) if self.file_type is not None else None
        return known or _guess_file_type(self.tensors, self.architecture)

    @property
    def context_length(self) -> int | None:
        """Return the model's maximum context (``<arch>.context_length``)."""
        return self._arch_int("context_length")

    @property
    def block_count(self) -> int | None:
        """Return the number of layers (``<arch>.block_count``, llama.cpp's n_layer)."""
        return self._arch_int("block_count")

    @property
    def embedding_length(self) -> int | None:
        """Return n_embd (``<arch>.embedding_length``)."""
        return self._arch_int("embedding_length")

    @property
    def feed_forward_length(self) -> int | None:
        """Return n_ff (largest value when stored per layer)."""
        return self._arch_int("feed_forward_length")

    @property
    def head_count(self) -> int | None:
        """Return n_head (largest value when stored per layer)."""
        return self._arch_int("attention.head_count")

    @property
    def head_count_kv(self) -> int | None:
        """Return n_head_kv, defaulting to n_head as llama.cpp does."""
        return self._arch_int("attention.head_count_kv") or self.head_count

    @property
    def key_length(self) -> int | None:
        """Return the per-head key size, defaulting to n_embd / n_head as llama.cpp does."""
        explicit = self._arch_int("attention.key_length")
        if explicit:
            return explicit
        if self.embedding_length and self.head_count:
            return self.embedding_length // self.head_count
        return None

    @property
    def value_length(self) -> int | None:
        """Return the per-head value size, defaulting like :attr:`key_length`."""
        return self._arch_int("attention.value_length") or self.key_length

    @property
    def sliding_window(self) -> int | None:
        """Return the sliding-window size (``<arch>.attention.sliding_window``), if any."""
        return self._arch_int("attention.sliding_window")

    @property
    def vocab_size(self) -> int | None:
        """Return the vocabulary size from ``<arch>.vocab_size`` or the token list."""
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        return self._arch_int("vocab_size") or (len(tokens) if isinstance(tokens, list) else None)

    @property
    def parameter_count(self) -> int:
        """Return the total number of elements of this file's tensors."""
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_data_bytes(self) -> int:
        """Return the size of the tensor data section (what llama.cpp maps)."""
        return max(self.file_size - self.data_offset, 0)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        return max(ints) if ints else None
    return None


def _guess_file_type(tensors: tuple[TensorInfo, ...], arch: str) -> str:
    """Name the file type from the dominant tensor type (gguf-parser's fallback)."""
    counts: dict[int, int] = {}
    for tensor in tensors:
        name = tensor.name
        if arch != "diffusion" and not (
            name.startswith(("token_embd", "blk.")) or "_norm" in name or name.endswith(".weight")
        ):
            continue
        counts[tensor.ggml_type] = counts.get(tensor.ggml_type, 0) + 1
    if not counts:
        return UNKNOWN_FILE_TYPE
    # Ties broken by type id so the answer never depends on iteration order.
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    if ranked[0] == 0:  # F32 norms dominate small models: look at the next type
        if len(ranked) == 1:
            return FILE_TYPES[0]
        ranked[0] = ranked[1]
    top = ranked[0]
    q3_k, q4_k, q5_k, q6_k, q8_0 = (counts.get(t, 0) for t in (11, 12, 13, 14, 8))
    special = {
        11: 13 if q8_0 or (q5_k > 1 and not q4_k) else 12 if q4_k > 1 else 11,
        12: 15 if q6_k > 1 else 12 if q3_k > 1 else 14,
        13: 17 if q6_k > 1 else 16,
        17: 28 if counts.get(23, 0) > 1 else 20,
        21: 22 if counts.get(18, 0) > 1 else 26,
    }
    file_type = special.get(top, _FILE_TYPE_BY_TENSOR.get(top))
    return FILE_TYPES[file_type] if file_type is not None else UNKNOWN_FILE_TYPE


class _Reader:
    """Sequential little-endian reader over one buffer refilled in 1 MiB chunks."""

    def __init__(self, fileobj: IO[bytes], size: int) -> None:
        self._file = fileobj
        self._size = size
        self._buf = b""
        self._pos = 0  # read position inside _buf
        self._base = 0  # file offset of _buf[0]

    @property
    def offset(self) -> int:
        return self._base + self._pos

    @property
    def remaining(self) -> int:
        return self._size - self.offset

    def _ensure(self, n: int, what: str) -> None:
        if self._pos + n <= len(self._buf):
            return
        if n > self.remaining:
            raise _FormatError(
                f"is truncated: {what} at byte {self.offset} needs {n} bytes but the file "
                f"ends at byte {self._size}; download or export it again"
            )
        rest = self._buf[self._pos :]
        self._base += self._pos
        self._buf = rest + self._file.read(max(n - len(rest), _CHUNK_BYTES))
        self._pos = 0
        if len(self._buf) < n:
            raise _FormatError(f"is truncated: {what} at byte {self.offset} could not be read")

    def unpack(self, st: struct.Struct, what: str) -> tuple[Any, ...]:
        self._ensure(st.size, what)
        values = st.unpack_from(self._buf, self._pos)
        self._pos += st.size
        return values

    def take(self, n: int, what: str) -> bytes:
        self._ensure(n, what)
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.remaining:
            raise _FormatError(
                f"is truncated: {what} at byte {self.offset} needs {n} bytes but the file "
                f"ends at byte {self._size}"
            )
        if self._pos + n <= len(self._buf):
            self._pos += n
            return
        target = self.offset + n
        self._file.seek(target)
        self._base, self._buf, self._pos = target, b"", 0

    def _string_length(self, what: str, limit: int) -> int:
        (length,) = self.unpack(_U64, what)
        if length > limit or length > self.remaining:
            raise _FormatError(
                f"is corrupt or truncated: {what} at byte {self.offset - 8} claims {length} bytes "
                f"(the file has {self.remaining} left)"
            )
        return int(length)

    def string(self, what: str, limit: int = _MAX_STRING_BYTES) -> str:
        return _decode(self.take(self._string_length(what, limit), what))

    def skip_strings(self, count: int, what: str, limit: int = _MAX_STRING_BYTES) -> None:
        """Read past ``count`` strings, checking each length as :meth:`string` does."""
        unpack_length = _U64.unpack_from
        left = count
        while left:
            # PERF: the strings that lie wholly inside the buffer are hopped over in this
            # tight loop (no method call per string): 50,000 tokens in about 10 ms.
            buf, pos, end = self._buf, self._pos, len(self._buf)
            while left and pos + 8 <= end:
                (length,) = unpack_length(buf, pos)
                if length > limit or pos + 8 + length > end:
                    break
                pos += 8 + length
                left -= 1
            self._pos = pos
            if left:
                # One string crosses the buffer's end (or is too long): the checked path.
                self.skip(self._string_length(what, limit), what)
                left -= 1


def _decode(raw: bytes) -> str:
    """Decode UTF-8, replacing each invalid byte with U+FFFD as Go's encoding/json does."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        escaped = raw.decode("utf-8", errors="surrogateescape")
        return "".join("\ufffd" if "\udc80" <= ch <= "\udcff" else ch for ch in escaped)


def _value_type(raw: int, what: str) -> ValueType:
    try:
        return ValueType(raw)
    except ValueError:
        raise _FormatError(f"is corrupt: {what} has unknown value type {raw}") from None


def _read_value(
    reader: _Reader,
    vtype: ValueType,
    what: str,
    depth: int = 0,
    max_elements: int | None = None,
) -> Any:
    """Return one value; arrays longer than ``max_elements`` become :class:`SkippedArray`."""
    scalar = _SCALARS.get(vtype)
    if scalar is not None:
        return reader.unpack(scalar, what)[0]
    if vtype is ValueType.STRING:
        return reader.string(what)
    sub_raw, count = reader.unpack(_ARRAY_HEAD, what)
    sub = _value_type(sub_raw, f"{what} (array element)")
    if depth >= _MAX_ARRAY_DEPTH:
        raise _FormatError(f"is corrupt: {what} nests arrays more than {_MAX_ARRAY_DEPTH} deep")
    element = _SCALARS.get(sub)
    min_size = element.size if element else (8 if sub is ValueType.STRING else 12)
    if count > _MAX_ARRAY_ELEMENTS or count * min_size > reader.remaining:
        raise _FormatError(
            f"is corrupt or truncated: {what} claims an array of {count} elements "
            f"(the file has {reader.remaining} bytes left)"
        )
    if max_elements is not None and count > max_elements:
        if element is not None:
            reader.skip(count * element.size, what)
        elif sub is ValueType.STRING:
            reader.skip_strings(count, what)
        else:
            for _ in range(count):
                _read_value(reader, sub, what, depth + 1, 0)
        return SkippedArray(sub, count)
    if element is not None:
        data = reader.take(count * element.size, what)
        return list(struct.unpack(f"<{count}{_SCALAR_FORMATS[sub]}", data))
    if sub is ValueType.STRING:
        return [reader.string(what) for _ in range(count)]
    return [_read_value(reader, sub, what, depth + 1, max_elements) for _ in range(count)]


def _read_header(reader: _Reader) -> tuple[int, int, int]:
    if reader.remaining == 0:
        raise _FormatError("is empty; re-download or re-export it")
    magic = reader.take(min(4, reader.remaining), "the magic")
    if magic != _MAGIC[: len(magic)]:
        legacy = _LEGACY_MAGICS.get(magic)
        if legacy:
            raise _FormatError(f"uses the legacy {legacy} format; convert it to GGUF")
        raise _FormatError(f"is not a GGUF file (magic {magic!r}, expected b'GGUF')")
    if len(magic) < 4:
        raise _FormatError(f"is truncated: the file has only {len(magic)} bytes")
    version, tensor_count, kv_count = reader.unpack(_HEADER, "the header")
    if version not in SUPPORTED_VERSIONS:
        if int.from_bytes(_U32.pack(version), "big") in (1, 2, 3):
            raise _FormatError("is a big-endian GGUF file; only little-endian files are supported")
        raise _FormatError(f"has GGUF version {version}; only versions 2 and 3 are supported")
    # Each entry needs at least 12 (key/value) or 24 (tensor info) bytes: a count the file
    # cannot hold is corruption, found before anything is allocated for it.
    if kv_count * 12 + tensor_count * 24 > reader.remaining:
        raise _FormatError(
            f"is corrupt or truncated: the header claims {kv_count} metadata entries and "
            f"{tensor_count} tensors but the file has only {reader.remaining} bytes left"
        )
    return version, tensor_count, kv_count


def _read_tensor(reader: _Reader, index: int) -> TensorInfo:
    what = f"tensor info {index}"
    name = reader.string(what, _MAX_KEY_BYTES)
    what = f"tensor '{name}'"
    (n_dims,) = reader.unpack(_U32, what)
    if n_dims > MAX_TENSOR_DIMS:
        raise _FormatError(f"is corrupt: {what} has {n_dims} dimensions (at most 4)")
    dims = struct.unpack(f"<{n_dims}Q", reader.take(8 * n_dims, what))
    ggml_type, offset = reader.unpack(_TENSOR_TAIL, what)
    known = GGML_TYPES.get(ggml_type)
    if known and dims and dims[0] % known[1]:
        raise _FormatError(
            f"is corrupt: {what} has {dims[0]} columns, not a multiple of the "
            f"{known[0]} block size {known[1]}"
        )
    return TensorInfo(name=name, dims=tuple(dims), ggml_type=ggml_type, offset=offset)


def _parse(
    fileobj: IO[bytes], path: Path, size: int, max_array_elements: int | None = None
) -> GGUFInfo:
    reader = _Reader(fileobj, size)
    version, tensor_count, kv_count = _read_header(reader)
    metadata: dict[str, Any] = {}
    for index in range(kv_count):
        key = reader.string(f"metadata key {index}", _MAX_KEY_BYTES)
        (raw_type,) = reader.unpack(_U32, f"metadata '{key}'")
        vtype = _value_type(raw_type, f"metadata '{key}'")
        metadata[key] = _read_value(
            reader, vtype, f"metadata '{key}'", max_elements=max_array_elements
        )
    tensors = tuple(_read_tensor(reader, index) for index in range(tensor_count))
    header_bytes = reader.offset
    alignment = _as_int(metadata.get("general.alignment")) or DEFAULT_ALIGNMENT
    if alignment <= 0 or alignment & (alignment - 1):
        raise _FormatError(f"is corrupt: general.alignment {alignment} is not a power of two")
    data_offset = -(-header_bytes // alignment) * alignment
    for tensor in tensors:
        n_bytes = tensor.n_bytes
        end = data_offset + tensor.offset + (n_bytes or 0)
        if end > size:
            raise _FormatError(
                f"is truncated: tensor '{tensor.name}' ends at byte {end} but the file has "
                f"{size} bytes; download or export it again"
            )
    return GGUFInfo(
        path=path,
        version=version,
        metadata=metadata,
        tensors=tensors,
        header_bytes=header_bytes,
        data_offset=data_offset,
        file_size=size,
    )


def read_gguf(path: Path, *, max_array_elements: int | None = None) -> GGUFInfo:
    """Read the header, metadata and tensor infos of a GGUF file.

    Args:
        path: The GGUF file (one shard of a sharded model is one file).
        max_array_elements: Metadata arrays longer than this are checked but not decoded:
            their value is a :class:`SkippedArray` (``None``: decode every array). Decoding
            a tokenizer's vocabulary and merges is most of the time a full read takes.

    Returns:
        The parsed header; tensor data is never read.

    Raises:
        InvalidModelFileError: The file is missing, unreadable, not GGUF, of an unsupported
            version or byte order, corrupt, or truncated.
    """
    path = Path(path)
    try:
        with open(path, "rb", buffering=0) as fileobj:
            size = os.fstat(fileobj.fileno()).st_size
            return _parse(fileobj, path, size, max_array_elements)
    except _FormatError as ex:
        raise InvalidModelFileError(f"model file '{path}' {ex}") from None
    except FileNotFoundError:
        raise InvalidModelFileError(f"model file '{path}' does not exist; check the path") from None
    except IsADirectoryError:
        raise InvalidModelFileError(
            f"model file '{path}' is a directory, not a GGUF file"
        ) from None
    except OSError as ex:
        raise InvalidModelFileError(f"model file '{path}' cannot be read: {ex.strerror}") from ex


def find_shards(path: Path) -> list[Path]:
    """Return every shard of a sharded model, in order, given any one of them.

    Shards are named ``<prefix>-00001-of-0000N.gguf`` and live in one directory, as
    gguf-parser's ``CompleteShardGGUFFilename`` expects.

    Returns:
        ``[path]`` when the name is not a shard name, else all N shard paths.

    Raises:
        InvalidModelFileError: A shard of the set is missing.
    """
    path = Path(path)
    match = _SHARD_NAME.match(path.name)
    if not match or int(match["shard"]) <= 0 or int(match["total"]) <= 0:
        return [path]
    total = int(match["total"])
    shards = [
        path.with_name(f"{match['prefix']}-{i:05d}-of-{total:05d}.gguf")
        for i in range(1, total + 1)
    ]
    for shard in shards:
        if not shard.is_file():
            raise InvalidModelFileError(
                f"shard '{shard.name}' of the sharded model '{path}' is missing; put all "
                f"{total} shards in '{path.parent}'"
            )
    return shards


def format_parameters(count: int) -> str:
    """Format a parameter count like gguf-parser, without the space: ``134.52M``."""
    for base, unit in ((1e15, "Q"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= base:
            return _trim(f"{count / base:.2f}") + unit
    return _trim(f"{float(count):.2f}")


# gguf-parser's GGUFBytesScalar: the largest binary or decimal unit the size reaches.
_PARSER_BYTE_UNITS: tuple[tuple[float, str], ...] = (
    (2**50, "PiB"), (1e15, "PB"), (2**40, "TiB"), (1e12, "TB"), (2**30, "GiB"), (1e9, "GB"),
    (2**20, "MiB"), (1e6, "MB"), (2**10, "KiB"), (1e3, "KB"),
)  # fmt: skip


def format_model_size(size: int) -> str:
    """Format a byte count like gguf-parser's GGUFBytesScalar, without the space: ``93.81MiB``.

    The ``size`` of a model's config; DMR writes the same text, so the config blob (and the
    model ID) of a packaged model matches DMR's.
    """
    return format_bytes(size, decimals=2, separator="", units=_PARSER_BYTE_UNITS)


def _trim(number: str) -> str:
    return number[:-3] if number.endswith(".00") else number


def format_value(value: Any) -> str | None:
    """Stringify one metadata value as DMR's config does (Go ``%d``, ``%f``, ``%t``).

    Returns ``None`` for arrays longer than 50 elements, which DMR leaves out. Elements of
    nested arrays are skipped, as in DMR.
    """
    if isinstance(value, list):
        if len(value) > MAX_GGUF_ARRAY_ELEMENTS:
            return None
        return ", ".join(_format_scalar(v) for v in value if not isinstance(v, list))
    return _format_scalar(value)


def _format_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return f"{value:f}"
    return str(value)


def _parser_model_size(info: GGUFInfo) -> int:
    # NOTE: gguf-parser pads with `alignment - offset % alignment`, a full extra block when the
    # header already ends aligned; reproduced so "size" matches what DMR writes.
    alignment = _as_int(info.metadata.get("general.alignment")) or DEFAULT_ALIGNMENT
    start = info.header_bytes + alignment - info.header_bytes % alignment
    return max(info.file_size - start, 0)


def gguf_model_config(paths: list[Path]) -> dict[str, Any]:
    """Build the ``config`` object of a DMR config blob for a GGUF model (spec 3.3).

    Args:
        paths: The model's files: one GGUF file, or every shard in order.

    Returns:
        ``{"format", "quantization", "parameters", "architecture", "size", "gguf",
        "context_size"}`` in DMR's field order; empty values are left out as Go's
        ``omitempty`` does.

    Raises:
        InvalidModelFileError: A file is missing or not a valid GGUF file.
    """
    infos = [read_gguf(Path(p)) for p in paths]
    if not infos:
        return {"format": "gguf"}
    merged: dict[str, Any] = {}
    for info in infos:
        # gguf-parser concatenates the shards' metadata, dropping the per-shard split.no.
        merged.update((k, v) for k, v in info.metadata.items() if k != "split.no")
    first = infos[0]
    architecture = first.architecture or _default_architecture(first)
    file_type = _as_int(merged.get("general.file_type"))
    all_tensors = tuple(t for info in infos for t in info.tensors)
    quantization = FILE_TYPES.get(file_type) if file_type is not None else None
    config: dict[str, Any] = {
        "format": "gguf",
        "quantization": quantization or _guess_file_type(all_tensors, first.architecture),
        "parameters": format_parameters(sum(i.parameter_count for i in infos)),
        "architecture": architecture,
        "size": format_model_size(sum(_parser_model_size(i) for i in infos)),
    }
    gguf_map = {
        key: text for key, value in merged.items() if (text := format_value(value)) is not None
    }
    if gguf_map:
        config["gguf"] = dict(sorted(gguf_map.items()))
    context = _as_int(merged.get(f"{first.architecture}.context_length"))
    if context is not None and 0 < context <= 2**31 - 1:
        config["context_size"] = context
    return config


def _default_architecture(info: GGUFInfo) -> str:
    """Name the architecture of a file without ``general.architecture`` as gguf-parser does."""
    diffusion = any(
        t.name.startswith(("model.diffusion_model.", "double_blocks.")) for t in info.tensors
    )
    return "diffusion" if diffusion else "llama"
