"""The interactive chat loop of ``docker model run`` driven by scripted input lines."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from orchestrator.errors import ConflictError
from orchestrator.modelcli.commands.run import ChatLoop
from orchestrator.modelcli.context import CliContext


class FakeClient:
    def __init__(self, fail: Exception | None = None) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.fail = fail

    def request(self, method: str, path: str, *, json_body: Any = None, **_: Any) -> Any:
        self.requests.append((method, path, json_body))
        if self.fail is not None and path == "/engines/_configure":
            raise self.fail

        class Done:
            def close(self) -> None:
                pass

        return Done()


class FakeSession:
    def __init__(self, client: FakeClient, interrupt_on: str = "") -> None:
        self.client = client
        self.model = "ai/smollm2"
        self.system: str | None = None
        self.history: list[dict[str, str]] = []
        self.options: dict[str, Any] = {}
        self.asked: list[tuple[str | None, str, dict[str, Any]]] = []
        self.interrupt_on = interrupt_on

    def ask(self, prompt: str) -> str:
        self.asked.append((self.system, prompt, dict(self.options)))
        if prompt == self.interrupt_on:
            raise KeyboardInterrupt
        self.history += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": "ok"},
        ]
        return "ok"


def script(items: Iterable[object]) -> tuple[Any, list[str]]:
    pending = list(items)
    prompts: list[str] = []

    def read_line(prompt: str) -> str:
        prompts.append(prompt)
        if not pending:
            raise EOFError
        item = pending.pop(0)
        if isinstance(item, BaseException):
            raise item
        return str(item)

    return read_line, prompts


def chat(
    lines: Iterable[object], session: FakeSession | None = None
) -> tuple[int, FakeSession, str, str, list[str]]:
    session = session or FakeSession(FakeClient())
    ctx = CliContext(
        stdout=io.StringIO(), stderr=io.StringIO(), environ={"DOCKER_MODEL_NOHISTORY": "1"}
    )
    read_line, prompts = script(lines)
    status = ChatLoop(ctx, session, read_line).run()  # type: ignore[arg-type]
    return status, session, ctx.stdout.getvalue(), ctx.stderr.getvalue(), prompts  # type: ignore[attr-defined]


def test_two_turns_then_bye() -> None:
    status, session, _, _, prompts = chat(["Hello", "", "Again", "/bye", "never read"])
    assert status == 0
    assert [prompt for _, prompt, _ in session.asked] == ["Hello", "Again"]
    assert prompts == ["> "] * 4


def test_multiline_block_is_one_message() -> None:
    _, session, _, _, prompts = chat(['"""first', "second", 'third"""', '"""one line"""', "/exit"])
    assert [prompt for _, prompt, _ in session.asked] == ["first\nsecond\nthird", "one line"]
    assert prompts == ["> ", ". ", ". ", "> ", "> "]


def test_set_system_applies_to_later_turns() -> None:
    _, session, out, _, _ = chat(
        ["/set system You are a pirate.  Arr.", "Hi", "/set system", "Bye?"]
    )
    assert session.asked[0][0] == "You are a pirate.  Arr."
    assert session.asked[1][0] is None
    assert "Set system message." in out and "Cleared system message." in out


def test_set_num_ctx_configures_the_model() -> None:
    client = FakeClient()
    _, _, out, _, _ = chat(
        ["/set num_ctx 4096", "/set parameter num_ctx 2048"], FakeSession(client)
    )
    bodies = [body for _, path, body in client.requests if path == "/engines/_configure"]
    assert bodies == [
        {"model": "ai/smollm2", "context-size": 4096},
        {"model": "ai/smollm2", "context-size": 2048},
    ]
    assert "Set parameter 'num_ctx' to '4096'" in out


def test_set_num_ctx_error_is_reported_and_the_chat_goes_on() -> None:
    client = FakeClient(fail=ConflictError("runner already active; try again when idle"))
    status, session, _, err, _ = chat(["/set num_ctx 4096", "Still here?"], FakeSession(client))
    assert status == 0
    assert "runner already active" in err
    assert [prompt for _, prompt, _ in session.asked] == ["Still here?"]


def test_set_parameter_goes_into_requests() -> None:
    _, session, _, err, _ = chat(
        [
            "/set parameter temperature 0.2",
            "/set parameter num_predict 10",
            "/set parameter top_k x",
            "/set parameter bogus 1",
            "Hi",
        ]
    )
    assert session.asked[0][2] == {"temperature": 0.2, "max_tokens": 10}
    assert "top_k expects a number" in err and "Unknown parameter 'bogus'" in err


def test_ctrl_c_at_prompt_keeps_the_session() -> None:
    status, session, out, _, _ = chat([KeyboardInterrupt(), "Hello"])
    assert status == 0
    assert "Use Ctrl + d or /bye to exit." in out
    assert [prompt for _, prompt, _ in session.asked] == ["Hello"]


def test_ctrl_c_during_an_answer_stops_only_that_answer() -> None:
    session = FakeSession(FakeClient(), interrupt_on="long story")
    status, session, _, _, _ = chat(["long story", "short one"], session)
    assert status == 0
    assert [prompt for _, prompt, _ in session.asked] == ["long story", "short one"]
    # The interrupted turn is not part of the conversation.
    assert [m["content"] for m in session.history if m["role"] == "user"] == ["short one"]


def test_help_clear_and_unknown_commands() -> None:
    _, session, out, err, _ = chat(["Hi", "/?", "/help set", "/? shortcuts", "/clear", "/nope"])
    assert "/bye" in err and "/set system <string>" in err and "Ctrl + c" in err
    assert "Cleared session context" in out
    assert session.history == []
    assert "Unknown command '/nope'. Type /? for help" in out


def test_ctrl_d_exits_cleanly() -> None:
    status, _, out, _, _ = chat([])
    assert status == 0 and out == "\n"
