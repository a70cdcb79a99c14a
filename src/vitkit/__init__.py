"""vitkit: Vision Transformers as in "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021).

    model = vitkit.create_model("vit_s16", num_classes=10)
    vitkit.save(model, "model.safetensors")
    model = vitkit.load("model.safetensors")
    model = vitkit.load("augreg_b16_i21k_i1k_384")   # a release, see vitkit.list_pretrained()
"""

from vitkit.errors import VitkitError
from vitkit.formats import load, save
from vitkit.models import ModelConfig, VisionTransformer, count_parameters, create_model, list_models
from vitkit.pretrained import list_pretrained

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "list_pretrained", "load", "save", "ModelConfig", "VisionTransformer",
           "count_parameters", "VitkitError", "__version__"]
