"""Data: sources read into memory as uint8 tensors, splits, batched device-side augmentation."""

from vitkit.data.augment import (AugmentConfig, Augmenter, default_augment, normalize, soft_targets,
                                 to_unit_float)
from vitkit.data.dataset import DataSplits, ImageSet, stratified_split, training_subset
from vitkit.data.images import DEFAULT_MAX_IMAGE_PIXELS
from vitkit.data.sources import load_data, read_image_files, read_images

__all__ = ["AugmentConfig", "Augmenter", "DEFAULT_MAX_IMAGE_PIXELS", "DataSplits", "ImageSet",
           "default_augment", "load_data", "normalize", "read_image_files", "read_images", "soft_targets",
           "stratified_split",
           "to_unit_float", "training_subset"]
