"""``docker model run --color``: an answer's Markdown rendered for the terminal as it streams.

DMR renders with glamour; this uses rich (the terminal renderer most Python tools use) the same
way: text goes out as it arrives, one complete line at a time, rendered (headings, emphasis,
inline code, lists); a fenced code block is held until its closing fence and then printed
highlighted as a whole, since a half block cannot be highlighted. Without colour every chunk is
written as received, byte for byte.

``--color auto`` colours only a terminal, and never when ``NO_COLOR`` is set or ``TERM`` is
``dumb`` (https://no-color.org); ``yes`` always; ``no`` (DMR's default) never.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported only when colour is on: it costs ~50 ms at start-up
    from rich.console import Console

FENCE = "```"
_TRAILING_SPACES = re.compile(r" +(?=(?:\x1b\[0m)?$)", re.MULTILINE)
DIM = "\x1b[2m"
RESET = "\x1b[0m"


def color_enabled(mode: str, is_tty: bool, environ: Mapping[str, str]) -> bool:
    """Return whether ``--color MODE`` colours this output."""
    if mode == "yes":
        return True
    if mode == "no":
        return False
    return is_tty and "NO_COLOR" not in environ and environ.get("TERM", "") != "dumb"


class MarkdownStream:
    """Turns an answer's chunks into what the terminal shows.

    Args:
        color: Render Markdown (else pass chunks through unchanged).
        width: Columns to wrap at (default: the terminal's, else 80).
    """

    def __init__(self, color: bool, width: int | None = None) -> None:
        self.color = color
        self._width = width or shutil.get_terminal_size((80, 24)).columns
        self._pending = ""
        self._code: list[str] | None = None
        self._console: Console | None = None

    def add(self, chunk: str) -> str:
        """Take the next chunk; return what can be shown now."""
        if not self.color:
            return chunk
        self._pending += chunk
        shown: list[str] = []
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            shown.append(self._line(line))
        return "".join(shown)

    def reasoning(self, chunk: str) -> str:
        """Return a chunk of the model's reasoning as shown: dimmed when colouring."""
        return f"{DIM}{chunk}{RESET}" if self.color and chunk else chunk

    def flush(self) -> str:
        """Return what is left at the end of the answer (an unfinished line or code block)."""
        if not self.color:
            return ""
        rest, self._pending = self._pending, ""
        if self._code is not None:
            block = "\n".join([*self._code, rest]) if rest else "\n".join(self._code)
            self._code = None
            return self._render(f"{block}\n{FENCE}").rstrip("\n")
        return self._render(rest).rstrip("\n") if rest.strip() else rest

    def _line(self, line: str) -> str:
        if self._code is not None:
            self._code.append(line)
            if line.strip().startswith(FENCE) and len(self._code) > 1:
                block, self._code = "\n".join(self._code), None
                return self._render(block)
            return ""
        if line.lstrip().startswith(FENCE):
            self._code = [line]
            return ""
        if not line.strip():
            return "\n"
        # rich pads a paragraph to the full width (a resized terminal would wrap the padding)
        # and puts a margin above a list; the answer's own blank lines already separate blocks.
        return _TRAILING_SPACES.sub("", self._render(line)).lstrip("\n")

    def _render(self, markdown: str) -> str:
        from rich.console import Console
        from rich.markdown import Markdown

        if self._console is None:
            # rich reads NO_COLOR and TERM itself; color_enabled() has decided already.
            environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
            self._console = Console(
                file=io.StringIO(), force_terminal=True, color_system="256", width=self._width,
                legacy_windows=False, emoji=False, highlight=False,
                _environ=environ,
            )  # fmt: skip
        buffer = self._console.file
        assert isinstance(buffer, io.StringIO)
        buffer.seek(0)
        buffer.truncate()
        self._console.print(Markdown(markdown, code_theme="monokai"), end="")
        text = buffer.getvalue()
        return text if text.endswith("\n") else f"{text}\n"
