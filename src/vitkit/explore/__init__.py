"""`vitkit explore`: a local web page showing what a ViT attends to on the user's images.

`Explorer` answers the page's questions (predictions, rollout, attention per token, the
checkpoint's filters and position embeddings) from the vitkit.analysis functions; `ExploreServer`
serves it over HTTP with the page's own files (static/), which ship with the package.
"""

from vitkit.explore.app import Explorer
from vitkit.explore.server import ExploreServer

__all__ = ["ExploreServer", "Explorer"]
