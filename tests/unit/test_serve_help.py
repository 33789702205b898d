"""`--help` is plain text, and `serve --help` lists its flags in groups, the everyday ones first (issue 24)."""

from __future__ import annotations

import argparse
import re

import pytest

from llama_launcher import cli, serve_flags


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return capsys.readouterr().out


def _serve_parser() -> argparse.ArgumentParser:
    commands = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = commands.choices["serve"]
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


@pytest.mark.parametrize("argv", [[], ["serve"], ["setup"], ["doctor"], ["haproxy-config"], ["bench"],
                                  ["bench", "soak"]])
def test_help_has_no_rest_markup(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert "`" not in _help(capsys, *argv)


def test_serve_help_groups_its_flags_model_first(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "serve")
    titles = re.findall(r"^(\w[\w ]*):$", text, re.MULTILINE)
    assert titles == ["options", *serve_flags.GROUPS]
    assert text.index("--model ") < text.index("--host") < text.index("--tls-cert") < text.index("--redis-url-file")
    assert text.index("--redis-url-file") < text.index("--max-tokens") < text.index("--verbose")


def test_every_serve_flag_is_in_a_group_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _serve_parser()
    text = _help(capsys, "serve")
    grouped = {a for g in parser._action_groups if g.title in serve_flags.GROUPS for a in g._group_actions}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action in grouped, action.option_strings or action.dest
        for flag in action.option_strings:
            assert re.search(rf"^  {re.escape(flag)}\b", text, re.MULTILINE), flag
    assert len(grouped) >= 40


def test_the_groups_hold_what_they_are_named_for() -> None:
    parser = _serve_parser()
    members = {g.title: {s for a in g._group_actions for s in a.option_strings} for g in parser._action_groups}
    assert {"--model", "--models-dir", "--upstream", "--llama-server"} <= members["model"]
    assert {"--host", "--port", "--access-token-file"} <= members["access"]
    assert {"--tls-cert", "--public-url", "--trusted-proxy"} <= members["deployment"]
    assert {"--issuer-jwks", "--redis-url-file", "--audience"} <= members["fleet"]
    assert {"--max-tokens", "--rate-per-minute", "--max-connections"} <= members["limits"]
    assert members["logging"] == {"--verbose", "--log-format"}
    assert members["metrics"] == {"--metrics-port", "--metrics-per-user"}
