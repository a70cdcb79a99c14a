"""Evaluation on frozen features: extraction (with a cache), few-shot linear evaluation, linear probe."""

from vitkit.evaluate.features import cached_features, default_cache_dir, extract_features, split_features
from vitkit.evaluate.fewshot import fewshot_evaluate
from vitkit.evaluate.preprocess import normalize, prepare_images, resize_images
from vitkit.evaluate.probe import fit_logistic, linear_probe

__all__ = ["cached_features", "default_cache_dir", "extract_features", "fewshot_evaluate",
           "fit_logistic", "linear_probe", "normalize", "prepare_images", "resize_images", "split_features"]
