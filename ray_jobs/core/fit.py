"""Trainer assembly, epoch events, checkpoints and a Ray-free `fit_local`.

`assemble_fit` is the one way a fit is put together: `fit_local` uses it in this process, and the
Ray Train worker (`ray_jobs.train`) uses it with Ray's strategy, plugins and report callback.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from .catalog import weights_path
from .data import ImageDataModule
from .module import TrainConfig, build_module, resolve_class_weights

EVENT_KEYS = ("epoch", "epochs", "train_loss", "val_loss", "val_metric", "lr", "seconds", "images_per_s")


def _metric(trainer: L.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


class EpochEventCallback(Callback):
    """Publishes one plain-float event per validated epoch (rank 0) and honours a stop request.

    `images_per_s` is the training throughput of rank 0 times the world size; `seconds` is the
    whole epoch, validation included.
    """

    def __init__(self, publish: Callable[[dict], None], should_stop: Callable[[], bool] | None = None):
        self.publish = publish
        self.should_stop = should_stop
        self._epoch_start = 0.0
        self._train_end = 0.0
        self._images = 0
        self._lr: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._train_end = time.perf_counter()
        self._images = 0
        # Read now: epoch-interval schedulers step before on_train_epoch_end.
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[0])
        self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if "val_metric" not in trainer.callback_metrics:
            return  # no validation ran this epoch
        stop = False
        if trainer.is_global_zero:
            train_seconds = max(self._train_end - self._epoch_start, 1e-9)
            self.publish(
                {
                    "epoch": trainer.current_epoch + 1,
                    "epochs": trainer.max_epochs,
                    "train_loss": _metric(trainer, "train_loss"),
                    "val_loss": _metric(trainer, "val_loss"),
                    "val_metric": _metric(trainer, "val_metric"),
                    "lr": self._lr,
                    "seconds": time.perf_counter() - self._epoch_start,
                    "images_per_s": self._images * trainer.world_size / train_seconds,
                }
            )
            stop = bool(self.should_stop is not None and self.should_stop())
        # Every rank must stop together or DDP hangs.
        if trainer.strategy.broadcast(stop, src=0):
            trainer.should_stop = True


class BatchProgressCallback(Callback):
    """Progress inside an epoch (rank 0): `{"epoch", "epochs", "batch", "batches", "elapsed_s"}` after
    the first batch of each epoch, its last one, and otherwise at most once every `every_s` seconds —
    so a long epoch is not a frozen page, and the event bus is not flooded by many small batches."""

    def __init__(self, publish: Callable[[dict], None], every_s: float = 0.5):
        self.publish, self.every_s = publish, every_s
        self._epoch_start = self._last = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._last = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        now = time.perf_counter()
        batches = trainer.num_training_batches
        total = int(batches) if isinstance(batches, int | float) and math.isfinite(batches) else None
        done = batch_idx + 1
        if batch_idx and done != total and now - self._last < self.every_s:
            return
        self._last = now
        self.publish({"epoch": trainer.current_epoch + 1, "epochs": trainer.max_epochs, "batch": done,
                      "batches": total, "elapsed_s": now - self._epoch_start})


def _atomic_copy(source: Path, target: Path) -> None:
    """Publish `source` as `target` atomically: a hard link where possible (`last.ckpt` is later
    replaced by a new file, never rewritten, so the link keeps this epoch's bytes), else a copy."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class BestLastCheckpoint(Callback):
    """Writes `last.ckpt` every epoch and `best.ckpt` when val_metric (higher is better) improves,
    or stays equal with a lower val_loss: on a small validation set accuracy saturates within a few
    epochs, and the first epoch to reach it is rarely the best-trained model.

    Files are replaced atomically, so a reader never sees half a checkpoint. `best_metric` (and
    the val_loss that went with it) travel inside the checkpoints and are restored on resume.
    """

    def __init__(self, weights_dir: Path | str):
        self.weights_dir = Path(weights_dir)
        self.best_metric: float | None = None
        self.best_loss: float | None = None

    @property
    def last_path(self) -> Path:
        return self.weights_dir / "last.ckpt"

    @property
    def best_path(self) -> Path:
        return self.weights_dir / "best.ckpt"

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metric = _metric(trainer, "val_metric")
        if metric is None:
            return
        loss = _metric(trainer, "val_loss")
        improved = is_better(metric, loss, self.best_metric, self.best_loss)
        if improved:
            self.best_metric, self.best_loss = metric, loss
        if trainer.is_global_zero:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.last_path.with_name("last.ckpt.tmp")
        # Collective call: every rank enters, rank 0 writes. Full state, so a run can resume.
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)
            if improved:
                _atomic_copy(self.last_path, self.best_path)

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_loss": self.best_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_metric = state_dict.get("best_metric")
        self.best_loss = state_dict.get("best_loss")


def is_better(metric: float, loss: float | None, best_metric: float | None, best_loss: float | None) -> bool:
    """A higher val_metric wins; an equal one wins with a lower val_loss. NaN never wins."""
    if math.isnan(metric):
        return False
    if best_metric is None or metric > best_metric:
        return True
    if metric < best_metric or loss is None or math.isnan(loss):
        return False
    return best_loss is None or loss < best_loss


class ChannelsLast(Callback):
    """On CUDA: the model in channels_last memory format (the data module converts the batches), which
    tensor cores run faster under AMP. Classification models only."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.strategy.root_device.type == "cuda" and pl_module.config.task != "detection":
            pl_module.to(memory_format=torch.channels_last)


def build_trainer(
    config: TrainConfig,
    callbacks: Sequence[Callback] = (),
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: Any = "auto",
    plugins: Any = None,
    default_root_dir: Path | str | None = None,
) -> L.Trainer:
    """A Lightning Trainer for `config`. Seeds every RNG, so call it before building the module."""
    L.seed_everything(config.seed, workers=True)
    callbacks = list(callbacks)
    if config.early_stopping_patience:
        callbacks.append(EarlyStopping("val_metric", mode="max", patience=config.early_stopping_patience))
    cuda = accelerator != "cpu" and torch.cuda.is_available()
    use_amp = config.mixed_precision and cuda
    if use_amp:  # bf16 needs no loss scaling and does not overflow; fp16 on GPUs without it
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if cuda:
        callbacks.append(ChannelsLast())
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        plugins=plugins,
        precision=precision if use_amp else "32-true",
        callbacks=callbacks,
        logger=False,  # epoch events are the history
        enable_checkpointing=False,  # BestLastCheckpoint writes the files
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=None if default_root_dir is None else str(default_root_dir),
    )


def assemble_fit(
    config: TrainConfig,
    train_samples: Sequence[dict],
    val_samples: Sequence[dict],
    callbacks: Sequence[Callback],
    cache_dir: Path | str | None = None,
    cache_max_bytes: int | None = None,
    cpus: int | None = None,
    log: Callable[[str], None] | None = None,
    **trainer_options: Any,
) -> tuple[L.Trainer, L.LightningModule, ImageDataModule]:
    """The trainer, module and data of one fit: class weights from the train samples, a seeded
    Trainer (`build_trainer` options pass through), then the module and the data module (reading a
    decoded cache in `cache_dir` when given; DataLoader settings from `cpus` unless
    `config.num_workers` is set)."""
    config = resolve_class_weights(config, train_samples)
    trainer = build_trainer(config, callbacks, **trainer_options)  # seeds: before the module
    module = build_module(config)
    datamodule = ImageDataModule(
        config.task,
        train_samples,
        val_samples,
        image_size=config.image_size,
        batch_size=config.batch_size,
        augmentations=config.augmentations,
        num_workers=config.num_workers,
        seed=config.seed,
        cache_dir=cache_dir,
        cache_max_bytes=cache_max_bytes,
        cpus=cpus,
        log=log,
    )
    return trainer, module, datamodule


def fit_local(
    config: TrainConfig | dict,
    train_samples: Sequence[dict],
    val_samples: Sequence[dict],
    run_dir: Path | str,
    publish: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_ckpt: Path | str | None = None,
    accelerator: str = "auto",
    cache_dir: Path | str | None = None,
) -> dict:
    """Train in this process with plain Lightning (no Ray).

    Checkpoints go to `run_dir/weights/`. With `resume_ckpt` training continues up to
    `config.epochs`; a larger `epochs` than the checkpoint was planned with extends the run.
    `epochs_run` counts all completed epochs, those before a resume included. With `cache_dir`, images
    are decoded once into a decoded cache there (`ray_jobs.core.cache`) and read from it every epoch.
    """
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    if config.pretrained:
        weights_path(config.model, config.weights_dir)  # fail before any work if missing
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = BestLastCheckpoint(run_dir / "weights")
    callbacks: list[Callback] = [checkpoints]
    if publish is not None or should_stop is not None:
        callbacks.insert(0, EpochEventCallback(publish or (lambda event: None), should_stop))
    trainer, module, datamodule = assemble_fit(
        config, train_samples, val_samples, callbacks, cache_dir=cache_dir, accelerator=accelerator,
        default_root_dir=run_dir,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=None if resume_ckpt is None else str(resume_ckpt))
    return {
        "best_metric": checkpoints.best_metric,
        "epochs_run": trainer.current_epoch,
        "best_ckpt": str(checkpoints.best_path) if checkpoints.best_path.exists() else None,
        "last_ckpt": str(checkpoints.last_path) if checkpoints.last_path.exists() else None,
    }
