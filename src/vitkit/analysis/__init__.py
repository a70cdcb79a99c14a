"""The paper's section 4.5 analyses: patch-embedding filters, position-embedding similarity,
mean attention distance, attention rollout; their plots; `analyze` writes them all."""

from vitkit.analysis.attention_distance import head_distances, mean_attention_distance, patch_distances
from vitkit.analysis.filters import filter_components, filters_for_display, patch_embedding_components
from vitkit.analysis.posemb_similarity import patch_position_embeddings, position_similarity
from vitkit.analysis.report import analyze
from vitkit.analysis.rollout import (attention_rollout, map_probe_weights, pooled_patch_weights, rollout_maps,
                                     rollout_queries, rollout_rows)

__all__ = ["analyze", "attention_rollout", "filter_components", "filters_for_display",
           "head_distances", "map_probe_weights", "mean_attention_distance", "patch_distances",
           "patch_embedding_components", "patch_position_embeddings", "pooled_patch_weights",
           "position_similarity", "rollout_maps", "rollout_queries", "rollout_rows"]
