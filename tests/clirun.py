"""``fedsim ARGS`` in the test's own process: the same `fedsim.cli.main`, its exit code and
what it printed, without a new interpreter's ~4 s start. For one-line errors and small runs;
what only a real process shows (signals, start-up, a fresh import) is tested with one."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import signal
from pathlib import Path

from fedsim.cli import main

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Completed:
    """As `subprocess.CompletedProcess`: the exit code and the two streams."""

    returncode: int
    stdout: str
    stderr: str


def fedsim_main(*args: str, cwd: str | Path = ROOT) -> Completed:
    out, err = io.StringIO(), io.StringIO()
    log = logging.getLogger("fedsim")
    handlers, level = log.handlers[:], log.level
    sigterm = signal.getsignal(signal.SIGTERM)
    log.handlers = []  # main() adds its own, writing to the stderr captured here
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        log.handlers, log.level = handlers, level
        signal.signal(signal.SIGTERM, sigterm)
    return Completed(code, out.getvalue(), err.getvalue())
