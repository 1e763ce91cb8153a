"""Training configuration and the LightningModules for both tasks.

A checkpoint's hyperparameters are `{"config": TrainConfig.to_dict(), "preprocess":
preprocess_spec(...)}`, enough to rebuild the model without the pretrained weights file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from pydantic import ValidationError, ValidationInfo, field_validator, model_validator
from torchmetrics.classification import MulticlassAccuracy

from ray_jobs.hyperparameters import OPTIMIZERS, SCHEDULERS, Hyperparameters

from .catalog import build_model, get_spec, load_pretrained
from .data import class_weights_from_samples, preprocess_spec, validate_augmentations

class TrainConfig(Hyperparameters):
    """Everything a run needs besides its samples: the hyperparameters (`Hyperparameters`, the one
    list) and what the run derives from its model and classes. Plain values only, so it travels
    as JSON. Invalid values raise ValueError with a message that says what to change."""

    model: str
    num_classes: int
    class_names: list[str]
    task: str | None = None  # derived from the model when omitted
    class_weights: list[float] | None = None  # from the training labels when omitted
    weights_dir: str | None = None
    num_workers: int | None = None  # DataLoader workers; None: chosen from the host (`data.loader_options`)

    def __init__(self, **values) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ValueError(_plain(exc)) from None

    @field_validator("optimizer", "scheduler", mode="before")
    @classmethod
    def _known_choice(cls, value, info: ValidationInfo):
        valid = OPTIMIZERS if info.field_name == "optimizer" else SCHEDULERS
        _check(value in valid, f"Invalid {info.field_name} '{value}'. Valid {info.field_name}s: {', '.join(valid)}")
        return value

    @field_validator("class_names", mode="before")
    @classmethod
    def _names_as_text(cls, value):
        return [str(name) for name in value]

    @field_validator("weights_dir", mode="before")
    @classmethod
    def _folder_as_text(cls, value):
        return None if value is None else str(value)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        spec = get_spec(self.model)
        if self.task is None:
            self.task = spec.task
        if self.task != spec.task:
            raise ValueError(f"Model '{self.model}' is a {spec.task} model, not {self.task}.")
        if self.image_size is None:
            self.image_size = spec.default_image_size
        self.augmentations = validate_augmentations(self.augmentations)
        min_classes = 2 if self.task == "classification" else 1
        _check(self.num_classes >= min_classes, f"num_classes must be at least {min_classes} for {self.task}")
        _check(len(self.class_names) == self.num_classes,
               f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}")
        _check(self.num_workers is None or self.num_workers >= 0, "num_workers must be 0 or more")
        _check(not self.pretrained or self.weights_dir is not None,
               "pretrained=True needs weights_dir, the folder holding the weights files")
        _check(not self.class_weighted_loss or self.task == "classification",
               "class_weighted_loss is only available for classification")
        if self.class_weights is not None:
            _check(len(self.class_weights) == self.num_classes,
                   f"class_weights has {len(self.class_weights)} values for {self.num_classes} classes")
            _check(all(w >= 0 for w in self.class_weights), "class_weights must not be negative")
        return self

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        unknown = set(values) - set(cls.model_fields)
        if unknown:
            raise ValueError(f"Unknown training setting(s): {', '.join(sorted(unknown))}.")
        return cls(**values)

    @classmethod
    def from_run(cls, model: str, class_names: list[str], params: dict, **extra) -> TrainConfig:
        """A run's configuration from its stored params (the hyperparameters and its task)."""
        chosen = {k: v for k, v in params.items() if k in Hyperparameters.model_fields}
        return cls(model=model, task=params.get("task"), num_classes=len(class_names), class_names=class_names,
                   **chosen, **extra)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message + ".")


def _plain(exc: ValidationError) -> str:
    """A validation error as one line: our own checks' messages as they are, pydantic's with the field."""
    parts = []
    for error in exc.errors():
        if error["type"] == "value_error":
            parts.append(str(error["ctx"]["error"]))
        else:
            parts.append(f"{'.'.join(map(str, error['loc']))}: {error['msg']}")
    return "; ".join(parts)


def resolve_class_weights(config: TrainConfig, train_samples: Sequence[dict]) -> TrainConfig:
    """Fill inverse-frequency class weights from the labels when a weighted loss is asked for."""
    if not config.class_weighted_loss or config.class_weights is not None:
        return config
    return config.model_copy(update={"class_weights": class_weights_from_samples(train_samples, config.num_classes)})


def _freeze_batchnorm(module: nn.Module) -> None:
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()


class _StudioModule(L.LightningModule):
    """Shared pieces: config, hyperparameters, pretrained loading, optimizer and schedule."""

    def __init__(self, config: TrainConfig | dict):
        super().__init__()
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        self.save_hyperparameters(
            {"config": self.config.to_dict(), "preprocess": preprocess_spec(self.config.task, self.config.image_size)}
        )
        # Pretrained weights load in setup("fit"), so rebuilding from a checkpoint never needs them.
        self.model = build_model(
            self.config.model, self.config.num_classes, pretrained=False, image_size=self.config.image_size
        )
        self._pretrained_loaded = False

    def setup(self, stage: str) -> None:
        # On resume the checkpoint's weights are restored after this and replace these.
        if stage == "fit" and self.config.pretrained and not self._pretrained_loaded:
            load_pretrained(self.model, self.config.model, self.config.weights_dir)
            self._pretrained_loaded = True

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of the base learning rate in (0-based) `epoch`.

        Computed from the planned epochs at call time, so a run resumed with more epochs
        (an extension) simply continues the longer schedule.
        """
        epochs = self.config.epochs
        if self.config.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))
        if self.config.scheduler == "step":
            return 0.1 ** (epoch // max(1, epochs // 3))
        return 1.0

    def configure_optimizers(self):
        cfg = self.config
        params = [p for p in self.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=cfg.learning_rate, momentum=0.9, weight_decay=1e-4)
        elif cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
        else:
            optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
        if cfg.scheduler == "none":
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # The optimizer state holds the learning rate of the old plan; recompute it for this
        # plan (they differ when the run is extended).
        schedulers = checkpoint.get("lr_schedulers") or []
        if not schedulers:
            return
        factor = self.lr_factor(schedulers[0]["last_epoch"])
        for state in checkpoint.get("optimizer_states", []):
            for group in state["param_groups"]:
                group["lr"] = group["initial_lr"] * factor


class ClassificationModule(_StudioModule):
    def __init__(self, config: TrainConfig | dict):
        super().__init__(config)
        weights = self.config.class_weights if self.config.class_weighted_loss else None
        if self.config.class_weighted_loss and weights is None:
            raise ValueError("class_weighted_loss needs class_weights: call resolve_class_weights first.")
        self.register_buffer("loss_weights", torch.tensor(weights) if weights else None, persistent=False)
        self.val_accuracy = MulticlassAccuracy(num_classes=self.config.num_classes, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def _step(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        logits = self.model(images)
        return logits, F.cross_entropy(logits, labels, weight=self.loss_weights)

    def training_step(self, batch, batch_idx):
        _, loss = self._step(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        logits, loss = self._step(batch)
        self.val_accuracy(logits, batch[1])
        self.log("val_loss", loss, on_epoch=True, sync_dist=True)
        self.log("val_metric", self.val_accuracy, on_epoch=True)


class DetectionModule(_StudioModule):
    """val_metric is mAP@0.5; val_loss is the training loss on validation images (no update)."""

    def __init__(self, config: TrainConfig | dict):
        super().__init__(config)
        from torchmetrics.detection import MeanAveragePrecision  # needs pycocotools, only here

        self.val_map = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5], backend="pycocotools"
        )
        # COCO scoring keeps each image's top 100 boxes; SSDLite proposes up to 300, by design.
        self.val_map.warn_on_many_detections = False

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        return self.model(images)

    def train(self, mode: bool = True):
        super().train(mode)
        # Fine-tuning with small batches: keep the pretrained backbone's BatchNorm statistics,
        # as torchvision does with FrozenBatchNorm2d.
        if mode and self.config.pretrained:
            _freeze_batchnorm(self.model.backbone)
        return self

    def training_step(self, batch, batch_idx):
        images, targets = batch
        loss = sum(self.model(images, targets).values())
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(images), sync_dist=True)
        return loss

    def _validation_loss(self, images, targets) -> torch.Tensor:
        # torchvision returns losses only in training mode; BatchNorm stays in eval so that
        # validation does not change running statistics.
        self.model.train()
        _freeze_batchnorm(self.model)
        try:
            return sum(self.model(images, targets).values())
        finally:
            self.model.eval()

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        self.val_map.update(self.model(images), targets)
        loss = self._validation_loss(images, targets)
        self.log("val_loss", loss, on_epoch=True, batch_size=len(images), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        # torchmetrics reports -1 when the validation set has no boxes at all; report 0.
        mean_ap = self.val_map.compute()["map"].clamp(min=0.0)
        self.log("val_metric", mean_ap, sync_dist=True)
        self.val_map.reset()


def build_module(config: TrainConfig | dict) -> _StudioModule:
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    module_cls = DetectionModule if config.task == "detection" else ClassificationModule
    return module_cls(config)
