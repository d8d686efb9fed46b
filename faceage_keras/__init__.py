"""Age and gender estimation from face images with Keras 3 on the PyTorch backend."""

import os
import sys

# Keras reads its backend once, at its first import, so this must run before it.
if "keras" in sys.modules:
    _backend = sys.modules["keras"].backend.backend()
    if _backend != "torch":
        raise ImportError(
            f"faceage_keras needs the Keras 'torch' backend, but Keras was already imported "
            f"with the {_backend!r} backend. Set the environment variable KERAS_BACKEND=torch "
            f"before anything imports keras, or import faceage_keras first."
        )
else:
    if os.environ.get("KERAS_BACKEND", "torch") != "torch":
        import warnings

        warnings.warn(
            f"KERAS_BACKEND={os.environ['KERAS_BACKEND']!r} is replaced by 'torch', "
            f"the only backend faceage_keras supports.",
            stacklevel=2,
        )
    os.environ["KERAS_BACKEND"] = "torch"

from faceage_keras.backbone import TimmBackbone  # noqa: E402
from faceage_keras.losses import FocalLoss  # noqa: E402
from faceage_keras.models import MODEL_NAMES, FaceAgeModel, build_model, default_compile_args  # noqa: E402
from faceage_keras.predict import FacePrediction, Predictor  # noqa: E402

__all__ = [
    "MODEL_NAMES",
    "FocalLoss",
    "TimmBackbone",
    "build_model",
    "FaceAgeModel",
    "default_compile_args",
    "FacePrediction",
    "Predictor",
]
