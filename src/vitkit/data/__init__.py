"""Data: sources read into memory as uint8 tensors, splits, batched device-side augmentation."""

from vitkit.data.dataset import DataSplits, ImageSet, stratified_split
from vitkit.data.sources import load_data

__all__ = ["DataSplits", "ImageSet", "load_data", "stratified_split"]
