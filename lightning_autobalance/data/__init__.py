"""Data: long-tail profiles, the held-out split and the offline data sets."""

from lightning_autobalance.data.labels import dataset_labels
from lightning_autobalance.data.mnist1d_lt import MNIST1DLongTail
from lightning_autobalance.data.profiles import long_tail_counts
from lightning_autobalance.data.split import HeldOutSplit, stratified_split

__all__ = [
    "HeldOutSplit",
    "MNIST1DLongTail",
    "dataset_labels",
    "long_tail_counts",
    "stratified_split",
]
