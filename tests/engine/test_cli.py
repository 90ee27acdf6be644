"""engine/cli: one error contract for every command, help texts that state the real defaults,
the old --engine spelling of --build."""
from __future__ import annotations

import json

import pytest

from engine import cli
from engine.cli import build_commands


@pytest.mark.parametrize("exc", [FloatingPointError("calibration: NaN in layer 3"), KeyError("split 'x'"),
                                 RuntimeError("runner failed"), FileNotFoundError("no such file: a.jpg"),
                                 MemoryError("cannot allocate 7 TiB"), ValueError("bad\ninput")])
def test_anticipated_errors_exit_2_with_one_line(monkeypatch, capsys, exc):
    def boom(_args):
        raise exc

    monkeypatch.setattr(build_commands, "run_cuts", boom)
    assert cli.main(["cuts", "densenet121", "--json"]) == 2
    out, err = capsys.readouterr()
    obj = json.loads(out)  # exactly one JSON object on stdout
    assert obj["command"] == "cuts" and obj["error"].startswith(type(exc).__name__ + ": ")
    assert len(err.strip().splitlines()) == 1 and err.startswith("otl cuts: error: ")
    assert "\n" not in obj["error"]


def test_debug_shows_the_traceback(monkeypatch):
    def boom(_args):
        raise FloatingPointError("x")

    monkeypatch.setattr(build_commands, "run_cuts", boom)
    monkeypatch.setenv("OTL_DEBUG", "1")
    with pytest.raises(FloatingPointError):
        cli.main(["cuts", "densenet121"])


def _help(command: str) -> dict:
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize("command", ["cuts", "engines", "featurize", "cache", "fit", "evaluate", "predict", "report"])
def test_help_states_the_real_defaults(command):
    """Every option of every command has a help text that states its default: the value itself when
    there is one, in words ("default: the model's default cut", "default off") otherwise."""
    actions = _help(command)
    for dest, a in actions.items():
        if dest == "help" or a.help == "==SUPPRESS==":
            continue
        assert a.help, f"{command} {dest}: no help text"
        if not a.option_strings or a.required:  # positionals and required options have no default
            continue
        assert "default" in a.help, f"{command} --{dest}: help {a.help!r} does not state the default"
        if a.default in (None, False) or a.nargs == 0:
            continue
        shown = {0.0: "0", 0.2: "0.2"}.get(a.default, str(a.default))
        assert f"default {shown}" in a.help or f"default: {shown}" in a.help or f"{shown} (default" in a.help \
            or f"default {shown}:" in a.help, f"{command} --{dest}: help {a.help!r} does not state {a.default!r}"


def test_validation_fraction_help_matches_fit():
    from engine.train import HOLDOUT_FRACTION, FitConfig

    h = _help("fit")["validation_fraction"].help
    assert FitConfig().carve_fraction() == 0.0 and "default 0: none" in h
    assert FitConfig(select="holdout").carve_fraction() == HOLDOUT_FRACTION and f"carves {HOLDOUT_FRACTION}" in h


@pytest.mark.parametrize("command", ["featurize", "fit", "evaluate", "predict"])
def test_engine_is_the_old_spelling_of_build(command):
    parser = cli.build_parser()
    extra = {"featurize": ["--out", "s"], "fit": [], "evaluate": ["--model", "m"], "predict": ["--model", "m", "a.jpg"]}
    a = parser.parse_args([command, "--engine", "B", *extra[command]])
    b = parser.parse_args([command, "--build", "B", *extra[command]])
    assert a.build == b.build == "B"
