"""Hostile shapes, fuzzed: deep nesting, huge integers, control characters, a byte-order
mark, multi-line and malformed ``--set``, path-like names, unreachable addresses and user
plug-ins that raise. Every case is accepted or refused with one line naming the field
(exit 2); a user plug-in's own frames may follow that line, nothing else; no traceback."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASE = (ROOT / "scenarios" / "presets" / "quickstart.toml").read_text()
ERROR = re.compile(r"^fedsim: error: (\S+)( = .*)?: .+$|^fedsim: error: [^\n]+$")
USER_FRAMES = "your code's traceback (most recent call last):"

STRINGS = ["../../x", "/", "/etc/passwd", "a/b", "C:\\\\x", "..", "a\\u0000b", "a\\u001b[31mred", "r\\u202eevil",
           "\\u00e9\\u4e2d", "x" * 5000, " lead", "", "a\\nb", "nul\\u0000", "\\ud7ff", "\\t"]
KEYS = ["run.name", "data.dataset.name", "strategy.name", "model.name", "data.partitioner.name", "client.app",
        "report.out_dir", "ray.address", "run.seed", "run.rounds", "client.lr", "client.batch_size",
        "data.num_clients", "probe.client_ids", "executor.name", "codec"]
PLUGINS = [("strategy.name", '"tests.apps.raising:Boom"'), ("data.dataset.name", '"tests.apps.raising:boom_data"'),
           ("data.partitioner.name", '"tests.apps.raising:boom_split"'), ("model.name", '"tests.apps.raising:BoomNet"'),
           ("plugins.imports", '["tests.apps.raising_import"]'), ("plugins.imports", '["tests.apps.nowhere"]'),
           ("strategy.name", '"tests.apps.raising:Nothing"'), ("codec", '[{name = "tests.apps.raising:Boom"}]')]
ADDRESSES = ['"10.255.255.1:6379"', '"nonsense"', '"ray://"', '"127.0.0.1:1"', '"[::1]:99999"', '"auto"']


def deep(depth: int, table: bool) -> str:
    return ("{a = " * depth + "1" + "}" * depth) if table else ("[" * depth + "]" * depth)


@st.composite
def literal(draw: Any) -> str:
    kind = draw(st.sampled_from(["deep", "bigint", "string", "number", "bare", "broken"]))
    if kind == "deep":
        return deep(draw(st.integers(1, 1200)), draw(st.booleans()))
    if kind == "bigint":
        return draw(st.sampled_from(["", "-"])) + "9" * draw(st.integers(1, 6000))
    if kind == "string":
        return '"' + draw(st.sampled_from(STRINGS)) + '"'
    if kind == "number":
        return draw(st.sampled_from(["0", "-1", "1e999", "nan", "inf", "-0.0", "0x10", "1_000", "2.5", "true"]))
    if kind == "bare":
        return draw(st.sampled_from(["fedavg", "my_pkg.mod:attr", "../x", "a b", "ray"]))
    return draw(st.sampled_from(['"unterminated', "[1, 2", "{a = }", "'x", '"a\x01b"', "= =", "[[]]]"]))


TABLES = ["run", "client", "x" * 300, "a.b.c.d.e.f", '"\\u0000"', "data.dataset"]


@st.composite
def case(draw: Any) -> tuple[str, list[str]]:
    text, sets = BASE, []
    for _ in range(draw(st.integers(1, 3))):
        shape = draw(st.sampled_from(["set", "set", "file", "multiline", "bom", "plugin", "address", "table"]))
        key = draw(st.sampled_from(KEYS))
        if shape == "set":
            sets.append(f"{key}={draw(literal())}")
        elif shape == "file":  # a value in the file itself replaced
            lines = [i for i, line in enumerate(text.split("\n")) if re.match(r"^\w+ = ", line)]
            rows = text.split("\n")
            i = draw(st.sampled_from(lines))
            rows[i] = rows[i].split(" = ", 1)[0] + " = " + draw(literal())
            text = "\n".join(rows)
        elif shape == "multiline":
            sets.append(f"{key}={draw(literal())}\n[evil]\nx = {draw(literal())}")
        elif shape == "bom":
            text = "\ufeff" + text
        elif shape == "plugin":
            field, value = draw(st.sampled_from(PLUGINS))
            sets.append(f"{field}={value}")
        elif shape == "address":
            sets += ['executor.name="ray"', f"ray.address={draw(st.sampled_from(ADDRESSES))}"]
        else:
            table, value = draw(st.sampled_from(TABLES)), draw(literal())
            text += f"\n[{table}]\nk = {value}\n"
    return text, sets


CASES = {"n": 0, "ok": 0, "refused": 0, "with_user_frames": 0}


def own_frames_only(lines: list[str]) -> bool:
    """Below the one line: a heading, then only frames of the user's files (tests/apps)."""
    if not lines:
        return True
    if lines[0] != USER_FRAMES:
        return False
    files = [line for line in lines[1:] if line.startswith("  File ")]
    return bool(files) and all("/tests/apps/" in line for line in files)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=case())
def test_hostile_shapes_never_traceback(scenario: tuple[str, list[str]],
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    text, sets = scenario
    path = tmp_path_factory.mktemp("shape") / "s.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    err, out = io.StringIO(), io.StringIO()
    args = ["check", str(path)] + [a for s in sets for a in ("--set", s)]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(args)  # an unexpected exception fails the test with its traceback
    CASES["n"] += 1
    lines = err.getvalue().rstrip("\n").split("\n")
    if code == 0:
        CASES["ok"] += 1
        return
    CASES["refused"] += 1
    assert code == 2, err.getvalue()
    assert ERROR.match(lines[0]), lines[0]
    assert "Traceback" not in err.getvalue()
    assert own_frames_only(lines[1:]), err.getvalue()
    CASES["with_user_frames"] += len(lines) > 1


def test_shapes_counted_enough_cases() -> None:
    """Runs after the fuzz above in file order: with the mutated-preset fuzz (test_fuzz.py,
    520 cases) this makes more than 1,000 hostile inputs."""
    if CASES["n"] == 0:
        pytest.skip("the shape fuzz did not run in this session (deselected)")
    print(f"shapes: {CASES}")
    assert CASES["n"] >= 500 and CASES["refused"] > 300 and CASES["with_user_frames"] > 10, CASES
