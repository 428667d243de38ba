"""Data: long-tail profiles, the held-out split and the offline data sets."""

from lightning_autobalance.data.cifar_lt import CIFAR10LongTail, CIFAR100LongTail
from lightning_autobalance.data.labels import dataset_labels
from lightning_autobalance.data.mnist1d_lt import MNIST1DLongTail
from lightning_autobalance.data.profiles import long_tail_counts
from lightning_autobalance.data.resample import GroupBalancedSubsample, Upsample
from lightning_autobalance.data.split import HeldOutSplit, stratified_split
from lightning_autobalance.data.spurious import GroupTensorDataset, SpuriousMNIST1D
from lightning_autobalance.data.spurious_digits import SpuriousDigits

__all__ = [
    "CIFAR10LongTail",
    "CIFAR100LongTail",
    "GroupBalancedSubsample",
    "GroupTensorDataset",
    "HeldOutSplit",
    "MNIST1DLongTail",
    "SpuriousDigits",
    "SpuriousMNIST1D",
    "Upsample",
    "dataset_labels",
    "long_tail_counts",
    "stratified_split",
]
