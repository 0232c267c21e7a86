"""Every shipped scenario works: each preset (benchmarks included) and every cell of each
sweep grid validates; each preset runs one small round."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from fedsim.config import list_presets, load_config, load_toml, preset_path
from fedsim.sweeps import load_sweep

PRESETS = Path(__file__).resolve().parents[1] / "scenarios" / "presets"
SWEEPS = [name for name in list_presets() if "sweep" in load_toml(preset_path(name))]


def test_every_preset_file_is_listed() -> None:
    on_disk = sorted(p.relative_to(PRESETS).with_suffix("").as_posix() for p in PRESETS.rglob("*.toml"))
    assert list_presets() == on_disk
    assert "quickstart" in on_disk and "benchmarks/codecs" in on_disk
    assert len(SWEEPS) == 8  # quickstart-sweep and the seven benchmarks


@pytest.mark.parametrize("name", list_presets())
def test_preset_validates(name: str) -> None:
    cfg = load_config(name)  # a sweep file: its base scenario
    assert cfg.warnings() == []  # no setting that another makes pointless
    assert cfg.run.name == Path(name).name


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_cell_validates(name: str) -> None:
    sweep = load_sweep(preset_path(name))  # validates every cell's configuration
    expected = math.prod(len(values) for values in sweep.axes.values()) * max(1, len(sweep.spec.seeds))
    assert len(sweep.cells) == expected > 1
    for cell in sweep.cells:
        assert sweep.config(cell).warnings() == [], cell.label


#: What one small round of each preset needs besides ``run.rounds = 1``.
SMALL = {
    "benchmarks/leakage-utility": ["probe.rounds=[1]"],  # the probe attacks rounds 1 and 50
    "benchmarks/text-lora": ["data.sharing.warmup_epochs=1"],  # the shared-set warm-up: 20 epochs
}


@pytest.mark.slow
def test_every_preset_runs_one_round() -> None:
    """All presets in this one process (none needs a Ray cluster: all run on the serial executor)."""
    from fedsim.runner import run

    assert set(SMALL) <= set(list_presets())
    took = {}
    for name in list_presets():
        start = time.perf_counter()
        result = run(name, overrides=["run.rounds=1", "report.progress=false", *SMALL.get(name, [])], write=False)
        took[name] = round(time.perf_counter() - start, 1)
        assert [r["round"] for r in result.history] == [0, 1], name
        assert result.summary["client_failures"] == 0, name
        assert result.history[1]["clients_replied"] > 0, name
        assert result.stopped is None, name
    print("seconds per preset:", took)
