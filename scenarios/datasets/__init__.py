"""Dataset registry. Importing this package registers the built-in datasets."""

from fedsim.scenarios.datasets import cifar10, digits, femnist, files, mnist, synthetic, text  # noqa: F401  (registration)
from fedsim.scenarios.datasets.base import (
    DATASETS,
    Dataset,
    load_dataset,
    register_dataset,
    resolve_dataset_params,
)

__all__ = ["DATASETS", "Dataset", "load_dataset", "register_dataset", "resolve_dataset_params"]
