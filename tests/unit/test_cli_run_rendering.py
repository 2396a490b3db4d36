"""`docker model run`: images named in a prompt and the --color Markdown view of an answer."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from orchestrator.errors import InvalidRequestError
from orchestrator.modelcli.commands.run import include_files
from orchestrator.modelcli.image_attachments import MAX_IMAGE_BYTES, attach_images, media_type
from orchestrator.modelcli.markdown_stream import MarkdownStream, color_enabled

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 24
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 16
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _data(url: str) -> bytes:
    return base64.b64decode(url.split(",", 1)[1])


@pytest.mark.parametrize(("head", "kind"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp")])
def test_media_type_reads_the_signature(head: bytes, kind: str) -> None:
    assert media_type(head[:16]) == kind


def test_media_type_refuses_other_content() -> None:
    assert media_type(b"GIF89a" + b"\x00" * 10) is None
    assert media_type(b"XXXX\x10\x00\x00\x00WEBPVP8 ") is None  # WEBP without RIFF


def test_quoted_unquoted_and_home_paths_become_images_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a b.png").write_bytes(PNG)
    (tmp_path / "c.JPG").write_bytes(JPEG)
    (tmp_path / "d.webp").write_bytes(WEBP)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    prompt = attach_images(f'Compare "{tmp_path}/a b.png" with {tmp_path}/c.JPG and ~/d.webp, then ./e.png.')
    assert [url.split(";")[0] for url in prompt.images] == ["data:image/png", "data:image/jpeg", "data:image/webp"]
    assert [_data(url) for url in prompt.images] == [PNG, JPEG, WEBP]
    # Paths that name a file are gone; one that names nothing stays as typed.
    assert prompt.text == "Compare with and , then ./e.png."


def test_user_message_puts_images_before_the_text(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(PNG)
    message = attach_images(f"What is this? {tmp_path}/x.png").user_message()
    assert message["role"] == "user"
    assert [part["type"] for part in message["content"]] == ["image_url", "text"]
    assert message["content"][1]["text"] == "What is this?"
    assert attach_images("no images here").user_message() == {"role": "user", "content": "no images here"}


def test_a_file_named_like_an_image_that_is_not_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(InvalidRequestError, match="is not a JPEG, PNG or WebP image"):
        attach_images(f"read {tmp_path}/notes.png")


def test_an_image_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as out:
        out.write(PNG)
        out.truncate(MAX_IMAGE_BYTES + 1)  # sparse: no 100 MiB written
    with pytest.raises(InvalidRequestError, match="the limit is 100 MiB"):
        attach_images(f"{big}")


def test_at_reference_to_an_image_is_sent_as_an_image_not_inlined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.png").write_bytes(PNG)
    (tmp_path / "notes.txt").write_text("some notes")
    expanded = include_files("Look at @cat.png and @notes.txt")
    assert expanded == "Look at ./cat.png and some notes"
    assert [_data(url) for url in attach_images(expanded).images] == [PNG]


@pytest.mark.parametrize(
    ("mode", "tty", "environ", "expected"),
    [
        ("yes", False, {}, True),
        ("no", True, {}, False),
        ("auto", True, {"TERM": "xterm"}, True),
        ("auto", False, {"TERM": "xterm"}, False),
        ("auto", True, {"TERM": "xterm", "NO_COLOR": ""}, False),
        ("auto", True, {"TERM": "dumb"}, False),
    ],
)
def test_color_enabled(mode: str, tty: bool, environ: dict[str, str], expected: bool) -> None:
    assert color_enabled(mode, tty, environ) is expected


def test_without_color_chunks_pass_through_unchanged() -> None:
    view = MarkdownStream(False)
    chunks = ["# Ti", "tle\n**b**", "\n```py\nx = 1\n```"]
    assert "".join(view.add(chunk) for chunk in chunks) + view.flush() == "".join(chunks)
    assert view.reasoning("thinking") == "thinking"


def test_color_renders_complete_lines_and_holds_code_until_its_fence_closes() -> None:
    view = MarkdownStream(True, width=60)
    assert view.add("Some **bo") == ""  # half a line: nothing yet
    line = view.add("ld** text\n")
    assert "\x1b[1mbold\x1b[0m" in line and "**" not in line
    assert not line.endswith(" \n")  # rich's padding to the width is cut
    assert view.add("```python\nprint('hi')\n") == ""  # the block is not closed yet
    block = view.add("```\n")
    assert "print" in ANSI.sub("", block) and "```" not in block and ANSI.search(block)
    assert ANSI.sub("", view.add("- item\n")).strip() == "• item"
    assert view.add("Tail without newline") == ""
    assert ANSI.sub("", view.flush()).strip() == "Tail without newline"


def test_an_unclosed_code_block_is_shown_at_the_end() -> None:
    view = MarkdownStream(True, width=60)
    assert view.add("```\nleft open\n") == ""
    assert "left open" in ANSI.sub("", view.flush())


def test_reasoning_is_dimmed_with_color() -> None:
    assert MarkdownStream(True).reasoning("hmm") == "\x1b[2mhmm\x1b[0m"
