"""Images named in a ``docker model run`` prompt, sent as OpenAI ``image_url`` content parts.

As DMR's CLI does: a path in the prompt that ends in .jpg, .jpeg, .png or .webp — quoted
(``"/my pics/cat.png"``, ``'./a b.webp'``) or not (``/tmp/cat.png``, ``./cat.jpg``, ``~/cat.jpg``)
— is read, checked to be an image, base64-encoded into a ``data:`` URL and removed from the text.
A path that names no file is left in the text (it may be a word that only looks like a path).
The model must have a multimodal projector; the daemon says so (400) when it has none.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import InvalidRequestError

#: DMR's limit: larger files are refused before they are read.
MAX_IMAGE_BYTES = 100 * 1024 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_EXTENSIONS = r"(?i:jpg|jpeg|png|webp)"
# Quoted paths may hold spaces; unquoted ones start with /, ./, ../ or ~/ and stop at the first
# image extension followed by a word boundary (DMR also lets them hold spaces, which this keeps).
_IMAGE_PATH = re.compile(
    rf"\"([^\"]+?\.{_EXTENSIONS})\"|'([^']+?\.{_EXTENSIONS})'"
    rf"|((?:~/|\.\.?/|/)[^\n\"']*?\.{_EXTENSIONS})\b"
)
# Signatures of the accepted formats: the extension alone does not make a file an image.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"WEBP", 8, "image/webp"),
)


@dataclass
class Prompt:
    """A prompt's text without its image paths, and the images as ``data:`` URLs."""

    text: str
    images: list[str] = field(default_factory=list)

    def user_message(self) -> dict[str, Any]:
        """Return the OpenAI user message: plain text, or images then text as content parts."""
        if not self.images:
            return {"role": "user", "content": self.text}
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": url}} for url in self.images
        ]
        if self.text:
            parts.append({"type": "text", "text": self.text})
        return {"role": "user", "content": parts}


def media_type(head: bytes) -> str | None:
    """Return the media type of an image from its first bytes, or None for anything else."""
    for signature, offset, kind in _SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            if kind == "image/webp" and not head.startswith(b"RIFF"):
                continue
            return kind
    return None


def data_url(path: Path) -> str:
    """Return ``path`` as a ``data:<type>;base64,...`` URL.

    Raises:
        InvalidRequestError: The file is too large or is not a JPEG, PNG or WebP image.
        OSError: It cannot be read.
    """
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise InvalidRequestError(
            f"image {str(path)!r} is {size} bytes; the limit is {MAX_IMAGE_BYTES // 2**20} MiB"
        )
    data = path.read_bytes()
    kind = media_type(data[:16])
    if kind is None:
        raise InvalidRequestError(
            f"{str(path)!r} is not a JPEG, PNG or WebP image (its content says otherwise)"
        )
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def attach_images(prompt: str) -> Prompt:
    """Split ``prompt`` into its text and the images it names (see the module's rules).

    Raises:
        InvalidRequestError: A named image exists but cannot be sent (size, type, unreadable).
    """
    images: list[str] = []
    spans: list[tuple[int, int]] = []
    for match in _IMAGE_PATH.finditer(prompt):
        name = next(group for group in match.groups() if group)
        path = Path(name).expanduser()
        if not path.is_file():
            continue
        try:
            images.append(data_url(path))
        except OSError as ex:
            raise InvalidRequestError(f"cannot read image {name!r}: {ex.strerror}") from ex
        spans.append(match.span())
    if not spans:
        return Prompt(prompt)
    pieces, start = [], 0
    for begin, end in spans:
        pieces.append(prompt[start:begin])
        start = end
    pieces.append(prompt[start:])
    text = re.sub(r"[ \t]{2,}", " ", "".join(pieces)).strip()
    return Prompt(text, images)
