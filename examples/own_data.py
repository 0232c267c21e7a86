"""Your own data and model in fedsim: a tabular CSV, your ``nn.Module``, 50 clients.

The three functions below are all the user code there is: ``write_csv`` makes the data
(a stand-in for a file you already have), ``load`` is the dataset plug-in and
``TabularNet`` the model plug-in. ``examples/own_data.toml`` names them by path
(``examples.own_data:load``, ``examples.own_data:TabularNet``) and runs a Dirichlet
federation of 50 clients with FedProx and stragglers:

    python examples/own_data.py                          # writes the CSV, then runs the scenario
    fedsim run examples/own_data.toml                    # the same run from the command line
    fedsim run examples/own_data.toml --set executor.name=ray
    fedsim sweep examples/own_data.toml                  # its 2 x 2 grid: label skew x proximal term

Run from the repository root (the paths resolve from the working directory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

CSV = "results/own-data/patients.csv"


def write_csv(path: str = CSV, rows: int = 3000, seed: int = 0) -> Path:
    """A tabular task: 12 numeric features, 3 classes (a linear rule with noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 12))
    y = np.argmax(x @ rng.normal(size=(12, 3)) + 0.5 * rng.normal(size=(rows, 3)), axis=1)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join([f"f{i}" for i in range(12)] + ["label"])
    np.savetxt(out, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6g")
    return out


def load(path: str = CSV) -> dict[str, np.ndarray]:
    """The dataset plug-in: features and labels (fedsim partitions and splits them)."""
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    return {"x": table[:, :-1], "y": table[:, -1].astype(np.int64)}


class TabularNet(nn.Module):
    """The model plug-in: fedsim passes input_shape and num_classes; hidden comes from [model]."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.net(x)


def main() -> None:
    import fedsim

    write_csv()
    result = fedsim.run("examples/own_data.toml")
    print(f"final centralized accuracy {result.summary['final_central_acc']:.4f}; results in {result.out_dir}")


if __name__ == "__main__":
    main()
