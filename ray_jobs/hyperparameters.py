"""The hyperparameters of a training run: the one list, with its defaults and bounds.

The web's request schema (`ExperimentCreate`) extends it, and so does the run's full
configuration (`ray_jobs.core.module.TrainConfig`), which adds what a run derives (model,
classes, task, class weights). Pydantic only: the web side imports it without torch.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Optimizer = Literal["sgd", "adam", "adamw"]
Scheduler = Literal["none", "cosine", "step"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=1, le=1024)
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    optimizer: Optimizer = "adamw"
    scheduler: Scheduler = "cosine"
    image_size: int | None = Field(default=None, ge=32, le=2048, description="The model's default when omitted")
    augmentations: list[str] = Field(default_factory=lambda: ["hflip"], max_length=10)
    pretrained: bool = False
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    early_stopping_patience: int | None = Field(default=None, ge=1, le=1000)
    mixed_precision: bool = Field(default=True, description="Only takes effect on CUDA")
    class_weighted_loss: bool = False
