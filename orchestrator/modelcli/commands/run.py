"""``docker model run``: one-shot prompts, piped input, ``--detach`` preload and the chat.

The chat reads lines at DMR's ``> `` prompt (``. `` inside a ``\"\"\"`` block), keeps the
conversation, and understands ``/bye``, ``/help``, ``/set system``, ``/set num_ctx``,
``/set parameter``, ``/clear``. Ctrl-C while an answer streams closes that request and returns to
the prompt; Ctrl-C at the prompt only reminds how to leave; Ctrl-D or ``/bye`` leaves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from orchestrator import errors
from orchestrator.modelcli.commands.manage import pull_model
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.daemon_client import DaemonClient, error_from_body, model_path
from orchestrator.modelcli.image_attachments import IMAGE_SUFFIXES, attach_images
from orchestrator.modelcli.markdown_stream import MarkdownStream, color_enabled

CHAT_PATH = "/engines/v1/chat/completions"
PRELOAD_HEADERS = {"X-Preload-Only": "true"}
MULTILINE = '"""'
BYE_COMMANDS = ("/bye", "/exit")
# /set parameter NAME VALUE: Ollama's names mapped to OpenAI request fields.
PARAMETERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "seed": ("seed", int),
    "num_predict": ("max_tokens", int),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
}
HELP_TEXT = """Available Commands:
  /bye            Exit
  /clear          Clear the session context
  /set            Set session variables (/? set)
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts
  /? files        Help for file inclusion with @ symbol

Use \"\"\" to begin a multi-line message.
"""
HELP_SET = """Available Commands:
  /set system <string>            Set the system message
  /set num_ctx <int>              Set the context size (reloads the model)
  /set parameter <name> <value>   Set a parameter: num_ctx, temperature, top_p, top_k,
                                  seed, num_predict, presence_penalty, frequency_penalty
"""
HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor
  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit (/bye)
"""
HELP_FILES = """File Inclusion with @ symbol:
  Type @ followed by a filename to include its content in your prompt
  Examples: @README.md, @./src/main.py, @/path/to/file.txt
"""
_FILE_REFERENCE = re.compile(r"(?:(?<=\s)|^)@(\"[^\"]+\"|\S+)")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``run`` to the ``docker model`` parser."""
    cmd = commands.add_parser(
        "run", help="Run a model and interact with it using a submitted prompt or chat mode"
    )
    cmd.add_argument("model", metavar="MODEL")
    cmd.add_argument("prompt", nargs="*", metavar="PROMPT")
    cmd.add_argument(
        "--color",
        choices=("auto", "yes", "no"),
        default="no",
        help="Use colored output (auto|yes|no): render the answer's Markdown",
    )
    cmd.add_argument("--debug", action="store_true", help="Enable debug logging")
    cmd.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="Load the model in the background without interaction",
    )
    cmd.add_argument(
        "--openaiurl",
        default="",
        help="OpenAI-compatible API base URL to chat with instead of the daemon",
    )
    cmd.set_defaults(func=cmd_run)


def include_files(prompt: str) -> str:
    """Replace ``@path`` (or ``@"path with spaces"``) with the file's text when it exists (an
    image's ``@path`` with its path, which :func:`attach_images` then sends as an image)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1).strip('"')
        path = Path(name).expanduser()
        if not path.is_file():
            return match.group(0)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            # Sent as an image by attach_images, as a path it recognises.
            shown = name if name.startswith(("/", "./", "../", "~/")) else f"./{name}"
            return f'"{shown}"' if " " in shown else shown
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return match.group(0)

    return _FILE_REFERENCE.sub(replace, prompt)


def iter_chat_deltas(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """Yield ``("content"|"reasoning", text)`` from the lines of an SSE chat stream.

    Raises:
        OrchestratorError: The stream carried an error event.
    """
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            raise error_from_body(500, payload)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or choice.get("message") or {}
            reasoning = delta.get("reasoning_content")
            if reasoning:
                yield "reasoning", str(reasoning)
            content = delta.get("content")
            if content:
                yield "content", str(content)


class ChatSession:
    """One conversation with a model: history, system message and sampling options.

    Args:
        ctx: Streams and environment.
        client: Where chat requests go (the daemon, or ``--openaiurl``).
        model: Model reference sent in each request.
        chat_path: Path of the chat completions route on ``client``.
    """

    def __init__(
        self,
        ctx: CliContext,
        client: DaemonClient,
        model: str,
        chat_path: str,
        color: bool = False,
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.model = model
        self.chat_path = chat_path
        self.color = color
        self.system: str | None = None
        # User turns are text or, with images, OpenAI content parts.
        self.history: list[dict[str, Any]] = []
        self.options: dict[str, Any] = {}

    def messages_for(self, user: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the messages of a request that sends ``user`` after the history."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return [*messages, *self.history, user]

    def ask(self, prompt: str) -> str:
        """Send ``prompt`` (and the images it names), print the answer as it streams, remember
        the turn; return the answer."""
        user = attach_images(prompt).user_message()
        body = {
            "model": self.model,
            "messages": self.messages_for(user),
            "stream": True,
            **self.options,
        }
        response = self.client.request("POST", self.chat_path, json_body=body, stream=True)
        answer: list[str] = []
        content_type = response.headers.get("Content-Type", "")
        view = MarkdownStream(self.color)
        try:
            # An OpenAI-compatible server may ignore "stream" and answer one JSON document.
            if "json" in content_type and "event-stream" not in content_type:
                deltas: Iterator[tuple[str, str]] = _non_stream_deltas(response.json())
            else:
                deltas = iter_chat_deltas(self.client.iter_lines(response))
            for kind, text in deltas:
                if kind == "reasoning":
                    self.ctx.err(view.reasoning(text), end="")
                    continue
                answer.append(text)
                self.ctx.out(view.add(text), end="")
        finally:
            response.close()
            self.ctx.out(view.flush(), end="")
        reply = "".join(answer)
        self.history += [user, {"role": "assistant", "content": reply}]
        return reply


def _non_stream_deltas(document: Any) -> Iterator[tuple[str, str]]:
    for choice in (document or {}).get("choices") or []:
        message = choice.get("message") or {}
        if message.get("reasoning_content"):
            yield "reasoning", str(message["reasoning_content"])
        if message.get("content"):
            yield "content", str(message["content"])


def preload(client: DaemonClient, model: str) -> None:
    """Ask the daemon to load ``model`` without generating (``X-Preload-Only``)."""
    client.request(
        "POST", CHAT_PATH, json_body={"model": model, "messages": []}, headers=PRELOAD_HEADERS
    ).close()


def ensure_local(ctx: CliContext, model: str) -> None:
    """Pull ``model`` when the daemon does not have it, as DMR's ``run`` does."""
    try:
        ctx.client.request("GET", model_path(model)).close()
        return
    except errors.OrchestratorError as ex:
        if ex.status != 404 or isinstance(ex, errors.InvalidRequestError):
            raise
    ctx.err(f"Unable to find model '{model}' locally. Pulling from the server.")
    ctx.err(pull_model(ctx, model))


def cmd_run(args: argparse.Namespace, ctx: CliContext) -> int:
    """``run MODEL [PROMPT...]``."""
    prompt = " ".join(args.prompt)
    if not args.detach and not ctx.stdin_is_tty():
        piped = ctx.stdin.read()
        if piped:
            prompt = f"{prompt}\n\n{piped}" if prompt else piped
    if args.debug:
        ctx.err(f"Running model {args.model}" + (f" with prompt {prompt}" if prompt else ""))
    if args.openaiurl:
        client, chat_path = DaemonClient(args.openaiurl.rstrip("/")), "/chat/completions"
    else:
        ensure_local(ctx, args.model)
        client, chat_path = ctx.client, CHAT_PATH
    if args.detach:
        preload(client, args.model)
        if args.debug:
            ctx.err(f"Model {args.model} loaded successfully")
        return 0
    color = color_enabled(args.color, ctx.stdout_is_tty(), ctx.environ)
    session = ChatSession(ctx, client, args.model, chat_path, color=color)
    if prompt:
        session.ask(include_files(prompt))
        ctx.out()
        return 0
    if not ctx.stdin_is_tty():
        return 0
    return ChatLoop(ctx, session).run()


class ChatLoop:
    """The interactive chat on a terminal.

    Args:
        ctx: Streams and environment.
        session: The conversation.
        read_line: Reads one line after showing a prompt; raises ``EOFError`` on Ctrl-D and
            ``KeyboardInterrupt`` on Ctrl-C (default: ``input`` with ``readline`` editing).
    """

    def __init__(
        self, ctx: CliContext, session: ChatSession, read_line: Callable[[str], str] | None = None
    ) -> None:
        self.ctx = ctx
        self.session = session
        self._read_line = read_line or input
        self._history_path: Path | None = None

    def run(self) -> int:
        """Chat until ``/bye`` or Ctrl-D; return the exit status."""
        self._start_history()
        # Load the model while the user types the first question.
        threading.Thread(target=self._preload_quietly, name="preload", daemon=True).start()
        try:
            while True:
                try:
                    text = self._read_message()
                except EOFError:
                    self.ctx.out()
                    return 0
                except KeyboardInterrupt:
                    self.ctx.out("\nUse Ctrl + d or /bye to exit.")
                    continue
                if text is None:
                    continue
                if text.strip().lower() in BYE_COMMANDS or text.strip().lower().startswith(
                    BYE_COMMANDS
                ):
                    return 0
                if text.lstrip().startswith("/") and not text.startswith(MULTILINE):
                    self.command(text.strip())
                    continue
                if text.strip():
                    self._answer(text)
        finally:
            self._save_history()

    def _preload_quietly(self) -> None:
        # A failure here is reported properly by the first question.
        with contextlib.suppress(errors.OrchestratorError):
            preload(self.session.client, self.session.model)

    def _read_message(self) -> str | None:
        line = self._read_line("> ")
        if not line.startswith(MULTILINE):
            return line
        rest = line[len(MULTILINE) :]
        if rest.endswith(MULTILINE):
            return rest[: -len(MULTILINE)]
        parts = [rest]
        while True:
            line = self._read_line(". ")
            if line.endswith(MULTILINE):
                parts.append(line[: -len(MULTILINE)])
                return "\n".join(parts)
            parts.append(line)

    def _answer(self, text: str) -> None:
        try:
            self.session.ask(include_files(text))
            self.ctx.out()
        except KeyboardInterrupt:
            # Ctrl-C stops this answer only; the half answer is not kept in the history.
            self.ctx.out()
        except errors.OrchestratorError as ex:
            self.ctx.out()
            self.ctx.err(f"{self.ctx.prog}: {ex.message}")

    def command(self, line: str) -> None:
        """Run one slash command (``/help``, ``/set ...``, ``/clear``)."""
        words = line.split()
        name = words[0].lower()
        if name in ("/?", "/help"):
            topic = words[1].lower() if len(words) > 1 else ""
            text = {
                "shortcut": HELP_SHORTCUTS,
                "shortcuts": HELP_SHORTCUTS,
                "file": HELP_FILES,
                "files": HELP_FILES,
                "set": HELP_SET,
            }.get(topic, HELP_TEXT)
            self.ctx.err(text)
        elif name == "/clear":
            self.session.history.clear()
            self.ctx.out("Cleared session context")
        elif name == "/set":
            self._set(line, words)
        else:
            self.ctx.out(f"Unknown command '{words[0]}'. Type /? for help")

    def _set(self, line: str, words: list[str]) -> None:
        if len(words) >= 2 and words[1].lower() == "system":
            # Keep the text as typed (spaces included) after "/set system ".
            text = line.split(None, 2)[2] if len(words) > 2 else ""
            self.session.system = text.strip().strip('"') or None
            self.ctx.out(
                "Set system message." if self.session.system else "Cleared system message."
            )
            return
        if len(words) == 3 and words[1].lower() == "num_ctx":
            self._set_parameter("num_ctx", words[2])
            return
        if len(words) == 4 and words[1].lower() == "parameter":
            self._set_parameter(words[2].lower(), words[3])
            return
        self.ctx.err(HELP_SET)

    def _set_parameter(self, name: str, value: str) -> None:
        if name == "num_ctx":
            if not value.isdigit() or int(value) <= 0:
                self.ctx.err(f"num_ctx must be a positive number of tokens, not {value!r}")
                return
            try:
                self.session.client.request(
                    "POST",
                    "/engines/_configure",
                    json_body={"model": self.session.model, "context-size": int(value)},
                ).close()
            except errors.OrchestratorError as ex:
                self.ctx.err(f"{self.ctx.prog}: {ex.message}")
                return
        elif name in PARAMETERS:
            field, convert = PARAMETERS[name]
            try:
                self.session.options[field] = convert(value)
            except ValueError:
                self.ctx.err(f"{name} expects a number, not {value!r}")
                return
        else:
            self.ctx.err(f"Unknown parameter '{name}'.")
            self.ctx.err(HELP_SET)
            return
        self.ctx.out(f"Set parameter '{name}' to '{value}'")

    def _start_history(self) -> None:
        if self.ctx.environ.get("DOCKER_MODEL_NOHISTORY"):
            return
        try:
            import readline  # noqa: F401 - importing it gives input() line editing
        except ImportError:
            return
        config_dir = Path(self.ctx.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
        self._history_path = config_dir / "model-cli" / "history"
        # The first session has no history file yet.
        with contextlib.suppress(OSError):
            readline.read_history_file(self._history_path)

    def _save_history(self) -> None:
        if self._history_path is None:
            return
        import readline

        try:
            self._history_path.parent.mkdir(parents=True, exist_ok=True)
            readline.set_history_length(1000)
            readline.write_history_file(self._history_path)
        except OSError:
            pass  # history is a convenience; never fail the session over it
