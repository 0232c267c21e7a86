"""Hostile inputs pinned one by one (the fuzz in test_fuzz_shapes.py draws shapes at random;
these are the holes it was written for, each with the outcome it must have)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from fedsim.cli import main
from tests.test_fuzz_shapes import BASE, ERROR, own_frames_only


def cli(args: list[str]) -> tuple[int, list[str]]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(args)
    return code, err.getvalue().rstrip("\n").split("\n")


def refused(code: int, lines: list[str], field: str, fragment: str) -> None:
    assert code == 2, lines
    assert ERROR.match(lines[0]) and lines[0].startswith(f"fedsim: error: {field}"), lines[0]
    assert fragment in lines[0], lines[0]
    assert not any("Traceback" in line for line in lines)


def scenario(tmp_path: Path, text: str = BASE, name: str = "s.toml", encoding: str = "utf-8") -> str:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return str(path)


def test_nesting_too_deep_in_a_file_and_in_set(tmp_path: Path) -> None:
    deep = "[" * 900 + "]" * 900
    code, lines = cli(["check", scenario(tmp_path, BASE + f"\n[extra]\nk = {deep}\n")])
    assert code == 2 and "nested too deeply (at most 32 levels)" in lines[0] and len(lines) == 1, lines
    code, lines = cli(["check", "quickstart", "--set", f"client.app_config={deep}"])
    assert code == 2 and "nested too deeply" in lines[0] and len(lines) == 1, lines


def test_integers_of_thousands_of_digits_in_a_file_and_in_set(tmp_path: Path) -> None:
    big = "9" * 5000
    code, lines = cli(["check", scenario(tmp_path, BASE.replace("rounds = ", f"rounds = {big}\n# ", 1))])
    assert code == 2 and "an integer of more than 4300 digits" in lines[0] and len(lines) == 1, lines
    code, lines = cli(["check", "quickstart", "--set", f"run.rounds={big}"])
    assert code == 2 and "an integer of more than 4300 digits" in lines[0] and len(lines) == 1, lines


def test_a_multi_line_set_is_refused_not_half_applied() -> None:
    code, lines = cli(["check", "quickstart", "--set", "run.rounds=2\n[evil]\nx=1"])
    assert code == 2 and "must be one line" in lines[0] and len(lines) == 1, lines


def test_a_quoted_value_that_does_not_parse_is_an_error_not_a_raw_string() -> None:
    code, lines = cli(["check", "quickstart", "--set", 'run.name="a\x01b"'])
    assert code == 2 and lines[0].startswith("fedsim: error: run.name = ") and "invalid TOML" in lines[0], lines
    assert len(lines) == 1


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    code, lines = cli(["check", scenario(tmp_path, BASE, encoding="utf-8-sig")])
    assert code == 0, lines


@pytest.mark.parametrize("extra", [[], ["--set", "data.num_clients=10"]])
def test_a_hold_out_that_leaves_too_little_names_server_test_fraction(extra: list[str]) -> None:
    code, lines = cli(["check", "quickstart", "--set", "data.server_test_fraction=0.999",
                       "--set", "data.use_official_test=false", *extra])
    refused(code, lines, "data.server_test_fraction", "lower it")


def test_probe_client_ids_beyond_the_federation_are_refused() -> None:
    code, lines = cli(["check", "quickstart", "--set", 'probe.attack={name="analytic"}',
                       "--set", "probe.client_ids=[1000000000]"])
    refused(code, lines, "probe.client_ids", "partition ids are 0..")


def test_check_refuses_a_lora_base_that_run_would_refuse(tmp_path: Path) -> None:
    text = BASE + f'\n[[codec]]\nname = "lora"\nbase = "{tmp_path / "missing.safetensors"}"\n'
    code, lines = cli(["check", scenario(tmp_path, text)])
    refused(code, lines, "codec[0].base", "checkpoint not found")


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_strategy_constructor_that_raises_is_one_line_then_your_frames(command: str, tmp_path: Path) -> None:
    args = [command, "quickstart", "--set", 'strategy.name="tests.apps.raising:Boom"']
    if command == "run":
        args += ["--out", str(tmp_path / "r")]
    code, lines = cli(args)
    refused(code, lines, "strategy.name", "raised while being built")
    assert own_frames_only(lines[1:]) and len(lines) > 1, lines


@pytest.mark.parametrize("evil", ["\u202e", "\x9b", "\u2028", "\x1b[31m"])
def test_terminal_controls_in_a_key_name_are_shown_escaped(tmp_path: Path, evil: str) -> None:
    """A bidi override, a C1 CSI, a line separator or an ANSI escape in an unknown key's name
    (in a file and in --set) reaches the terminal escaped, on one line."""
    key = '"ke' + "".join(f"\\u{ord(c):04x}" for c in evil) + 'y"'
    assert "[run]\n" in BASE
    for args in (["check", scenario(tmp_path, BASE.replace("[run]\n", f"[run]\n{key} = 1\n", 1), name="k.toml")],
                 ["check", "quickstart", "--set", f"run.{key}=1"]):
        code, lines = cli(args)
        assert code == 2 and len(lines) == 1, lines
        assert evil not in lines[0] and "unknown key" in lines[0], lines[0]
        assert lines[0].isprintable(), lines[0]
