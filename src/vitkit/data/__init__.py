"""Data: sources read into memory as uint8 tensors, splits, batched device-side augmentation."""

from vitkit.data.dataset import DataSplits, ImageSet, stratified_split
from vitkit.data.images import DEFAULT_MAX_IMAGE_PIXELS
from vitkit.data.sources import load_data, read_images

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "DataSplits", "ImageSet", "load_data", "read_images", "stratified_split"]
