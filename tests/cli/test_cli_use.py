"""`tunesmith generate | chat | serve | export`: flags become config sections whose defaults come from config.py."""

from __future__ import annotations

import pytest

from tunesmith import api
from tunesmith.cli import main
from tunesmith.config import ChatConfig, ExportConfig, GenerateConfig, ServeConfig


@pytest.fixture
def calls(monkeypatch):
    """Each api function the commands call, replaced by one that records its arguments."""
    seen = {}

    class FakeServer:
        name, host, port, url, is_open = "m", "0.0.0.0", 1, "http://0.0.0.0:1/v1", True

        def run(self):
            seen["ran"] = True

    def record(name, result):
        def fake(*args, **kwargs):
            seen[name] = (args, kwargs)
            return result
        return fake

    monkeypatch.setattr(api, "generate_answers", record("generate", [{"output": "answer"}]))
    monkeypatch.setattr(api, "open_server", record("serve", FakeServer()))
    exported = {"out": "o", "gguf": None, "adapter": None, "modelfile": None, "verification": None}
    monkeypatch.setattr(api, "export", record("export", type("R", (), exported)()))
    monkeypatch.setattr(api, "open_chat", record("chat", "session"))
    monkeypatch.setattr("tunesmith.cli.chat.chat_loop", lambda session: seen.setdefault("loop", session))
    return seen


def test_generate_defaults_are_the_schema_defaults(calls, capsys):
    assert main(["generate", "m", "--prompt", "hi"]) == 0
    assert capsys.readouterr().out == "answer\n"
    assert calls["generate"][1]["settings"] == GenerateConfig()


def test_generate_flags_reach_the_section(calls):
    main(["generate", "m", "--prompt", "hi", "--precision", "fp32", "--temperature", "0.5", "--stop", "##",
          "--batch-size", "2", "--max-new-tokens", "9"])
    assert calls["generate"][1]["settings"] == GenerateConfig(precision="fp32", temperature=0.5, stop=["##"],
                                                              batch_size=2, max_new_tokens=9)


@pytest.mark.parametrize("flags", [["--temperature", "-1"], ["--batch-size", "0"], ["--top-p", "1.5"]])
def test_out_of_range_flags_exit_1_naming_the_flag(calls, flags, capsys):
    assert main(["generate", "m", "--prompt", "hi", *flags]) == 1
    assert flags[0][2:].replace("-", "_") in capsys.readouterr().err


def test_chat_uses_the_chat_section(calls):
    assert main(["chat", "m", "--system", "S", "--base"]) == 0
    args, kwargs = calls["chat"]
    assert kwargs == {"settings": ChatConfig(), "system": "S", "which": "base"}
    assert ChatConfig().max_new_tokens != GenerateConfig().max_new_tokens  # chat answers run longer
    assert calls["loop"] == "session"


def test_serve_warns_when_open_to_the_network(calls, capsys):
    assert main(["serve", "m", "--host", "0.0.0.0", "--precision", "bf16"]) == 0
    out, err = capsys.readouterr()
    assert calls["serve"][1]["limits"] == ServeConfig(host="0.0.0.0", precision="bf16")
    assert "warning: listening on 0.0.0.0 without --api-key" in err
    assert out == "serving m at http://0.0.0.0:1/v1 (OpenAI-compatible; Ctrl-C stops)\n" and calls["ran"]


def test_export_flags(calls, capsys):
    assert main(["export", "run", "--out", "o", "--merge"]) == 0
    assert calls["export"][1]["settings"] == ExportConfig(merge=True)
    assert capsys.readouterr().out == "exported to o\n"


def test_help_shows_the_schema_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {ChatConfig().max_new_tokens})" in out and "--precision {auto,bf16,fp16,fp32}" in out
