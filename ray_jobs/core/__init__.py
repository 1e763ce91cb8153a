"""Ray-free training core: model catalog, data, LightningModules, trainer assembly, inference.

Nothing here imports Ray, so the same code trains under Ray Train, in a plain process, or on a
GPU host without Ray.
"""

from .catalog import (
    MODELS,
    MissingWeightsError,
    ModelSpec,
    build_model,
    list_models,
    load_pretrained,
    parameter_count,
)
from .data import ImageDataModule, eval_transform, preprocess_spec, train_transform
from .fit import BestLastCheckpoint, EpochEventCallback, build_trainer, fit_local
from .inference import load_checkpoint, predict_images
from .module import ClassificationModule, DetectionModule, TrainConfig, build_module, resolve_class_weights

__all__ = [
    "MODELS",
    "BestLastCheckpoint",
    "ClassificationModule",
    "DetectionModule",
    "EpochEventCallback",
    "ImageDataModule",
    "MissingWeightsError",
    "ModelSpec",
    "TrainConfig",
    "build_model",
    "build_module",
    "build_trainer",
    "eval_transform",
    "fit_local",
    "list_models",
    "load_checkpoint",
    "load_pretrained",
    "parameter_count",
    "predict_images",
    "preprocess_spec",
    "resolve_class_weights",
    "train_transform",
]
