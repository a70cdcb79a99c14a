"""Mistakes on the command line: one line naming the mistake and pointing to the sub-command's
--help, exit code 2, for every sub-command; help that states each default once."""

import re

import pytest

from vitkit.cli.main import build_parser, main

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def error_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_an_unknown_flag_is_reported_by_its_sub_command_with_the_closest_flag(capsys):
    assert error_of(["train", "--epocs", "5"], capsys) == (
        "vitkit train: error: unrecognized arguments: --epocs 5 (--epocs: did you mean --epochs?); "
        "see `vitkit train --help`")
    assert error_of(["predict", "m.safetensors", "x.png", "--tpok=3"], capsys) == (
        "vitkit predict: error: unrecognized arguments: --tpok=3 (--tpok: did you mean --topk?); "
        "see `vitkit predict --help`")


def test_a_flag_like_nothing_known_gets_no_guess(capsys):
    assert error_of(["models", "--zzzzzz"], capsys) == (
        "vitkit models: error: unrecognized arguments: --zzzzzz; see `vitkit models --help`")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_sub_command_reports_its_own_mistakes(command, capsys):
    line = error_of([command, "--quite"], capsys)
    assert line.startswith(f"vitkit {command}: error: ") and line.endswith(f"; see `vitkit {command} --help`")
    assert "unrecognized arguments: --quite (--quite: did you mean --quiet?)" in line


def test_a_missing_argument_and_the_misspelt_flag_behind_it_are_named_together(capsys):
    assert error_of(["analyze", "model.safetensors", "--ouy", "dir"], capsys) == (
        "vitkit analyze: error: the following arguments are required: --out; unrecognized arguments: --ouy "
        "(--ouy: did you mean --out?); see `vitkit analyze --help`")


def test_a_bad_value_is_one_line_not_the_usage(capsys):
    assert error_of(["train", "--lr", "abc"], capsys) == (
        "vitkit train: error: argument --lr: invalid float value: 'abc'; see `vitkit train --help`")
    assert error_of(["predict"], capsys) == (
        "vitkit predict: error: the following arguments are required: checkpoint, images; "
        "see `vitkit predict --help`")
    assert error_of(["trian"], capsys).startswith("vitkit: error: argument COMMAND: invalid choice: 'trian'")


def help_entries(text: str) -> dict[str, str]:
    """Each option's help, its wrapped lines joined: {"--epochs INT": "training epochs ..."}."""
    entries, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (-\S.*?)(?:\s{2,}(.*))?$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2) or ""
        elif current and line.startswith("      "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", COMMANDS)
def test_help_states_each_default_once_and_never_none(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    entries = help_entries(capsys.readouterr().out)
    assert entries
    for flag, text in entries.items():
        assert len(re.findall(r"\(default\b|\bdefault:", text)) <= 1, (flag, text)
        assert "default: None" not in text, (flag, text)


def test_train_help_shows_real_defaults_and_none_that_the_data_picks(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    entries = help_entries(capsys.readouterr().out)
    assert entries["--epochs INT"] == "training epochs (default: picked from the data size)"
    assert entries["--momentum FLOAT"].endswith("(default: 0.9)") or entries["--momentum FLOAT"] == "default: 0.9"
    assert entries["--betas FLOAT [FLOAT ...]"].endswith("(default: 0.9 0.999)")
    # The model is picked from the data or a preset: ModelConfig's own defaults (width 768) are not it.
    assert entries["--width INT"] == "token width D"
    assert "--model-options DICT" not in entries  # a dict is set in a config file, not a flag
