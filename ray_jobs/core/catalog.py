"""Which torchvision models the studio trains, and how to build them without any download.

Pretrained weights are read only from a local folder (the appliance may run offline; the image
build, `aistudio fetch-weights` and the Training page's download fill it with `download_weights`). They load
into the same architecture that random init builds, so a checkpoint can always be rebuilt from
its hyperparameters alone, on a host that never had the weights file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models import detection as tvd
from torchvision.models._api import WeightsEnum

Task = Literal["classification", "detection"]


class MissingWeightsError(ValueError):
    """A pretrained build needs a weights file that is not in the weights folder."""

    def __init__(self, name: str, file: Path, url: str):
        self.file = file
        super().__init__(
            f"Pretrained weights for model '{name}' are missing: put the file '{file.name}' "
            f"in the folder '{file.parent}' (it is torchvision's {url}), "
            "or train with pretrained=False."
        )


@dataclass(eq=False)
class ModelSpec:
    """One trainable model.

    `params` counts trainable-architecture parameters with torchvision's default head (1000
    ImageNet / 91 COCO classes); it is measured on first use by `list_models`, None until then.
    (torchvision's own `num_params` counts FrozenBatchNorm as buffers, so it differs for some.)
    """

    name: str
    task: Task
    default_image_size: int
    weights_file: str
    params: int | None
    builder: Callable[..., nn.Module]
    weights: WeightsEnum
    # Regex over state-dict keys of the layers whose shape depends on num_classes: these are
    # left at random init when pretrained weights are loaded.
    head_pattern: str
    # Builder kwargs that do not depend on the dataset.
    build_kwargs: dict = field(default_factory=dict)
    # Detection models that rescale inputs to min_size/max_size: we pin both to the image
    # size, so the network sees exactly what the preprocessing produced.
    rescales_input: bool = False


def _spec(name, task, size, builder, weights, head_pattern, **extra) -> ModelSpec:
    return ModelSpec(
        name=name,
        task=task,
        default_image_size=size,
        weights_file=Path(urlparse(weights.url).path).name,
        params=None,
        builder=builder,
        weights=weights,
        head_pattern=head_pattern,
        **extra,
    )


_LIGHT_RCNN = {
    "box_batch_size_per_image": 64,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 100,
}

_SPECS = [
    _spec("resnet18", "classification", 224, tvm.resnet18, tvm.ResNet18_Weights.DEFAULT, r"fc\."),
    _spec("resnet50", "classification", 224, tvm.resnet50, tvm.ResNet50_Weights.DEFAULT, r"fc\."),
    _spec("mobilenet_v3_small", "classification", 224, tvm.mobilenet_v3_small,
          tvm.MobileNet_V3_Small_Weights.DEFAULT, r"classifier\.3\."),
    _spec("mobilenet_v3_large", "classification", 224, tvm.mobilenet_v3_large,
          tvm.MobileNet_V3_Large_Weights.DEFAULT, r"classifier\.3\."),
    _spec("efficientnet_b0", "classification", 224, tvm.efficientnet_b0,
          tvm.EfficientNet_B0_Weights.DEFAULT, r"classifier\.1\."),
    _spec("convnext_tiny", "classification", 224, tvm.convnext_tiny,
          tvm.ConvNeXt_Tiny_Weights.DEFAULT, r"classifier\.2\."),
    _spec("fasterrcnn_mobilenet_v3_large_fpn", "detection", 512,
          tvd.fasterrcnn_mobilenet_v3_large_fpn, tvd.FasterRCNN_MobileNet_V3_Large_FPN_Weights.DEFAULT,
          r"roi_heads\.box_predictor\.", build_kwargs=_LIGHT_RCNN, rescales_input=True),
    _spec("fasterrcnn_resnet50_fpn_v2", "detection", 640, tvd.fasterrcnn_resnet50_fpn_v2,
          tvd.FasterRCNN_ResNet50_FPN_V2_Weights.DEFAULT, r"roi_heads\.box_predictor\.",
          rescales_input=True),
    _spec("retinanet_resnet50_fpn_v2", "detection", 640, tvd.retinanet_resnet50_fpn_v2,
          tvd.RetinaNet_ResNet50_FPN_V2_Weights.DEFAULT, r"head\.classification_head\.cls_logits\.",
          rescales_input=True),
    _spec("ssdlite320_mobilenet_v3_large", "detection", 320, tvd.ssdlite320_mobilenet_v3_large,
          tvd.SSDLite320_MobileNet_V3_Large_Weights.DEFAULT,
          r"head\.classification_head\.module_list\.\d+\.1\."),
    _spec("fcos_resnet50_fpn", "detection", 640, tvd.fcos_resnet50_fpn,
          tvd.FCOS_ResNet50_FPN_Weights.DEFAULT, r"head\.classification_head\.cls_logits\.",
          rescales_input=True),
]

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"Unknown model '{name}'. Valid models: {', '.join(MODELS)}.")
    return MODELS[name]


@cache
def parameter_count(name: str) -> int:
    """Exact count for the default head, built on the meta device (no memory, ~0.1 s)."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = spec.builder(weights=None, **_builder_kwargs(spec, num_outputs=None, image_size=None))
    spec.params = sum(p.numel() for p in model.parameters())
    return spec.params


def list_models(task: Task | None = None) -> list[dict]:
    """Models for the UI, with parameter counts."""
    if task not in (None, "classification", "detection"):
        raise ValueError(f"Unknown task '{task}'. Valid tasks: classification, detection.")
    return [
        {
            "name": spec.name,
            "task": spec.task,
            "parameters": parameter_count(spec.name),
            "default_image_size": spec.default_image_size,
            "weights_file": spec.weights_file,
        }
        for spec in _SPECS
        if task is None or spec.task == task
    ]


def weights_path(name: str, weights_dir: Path | str) -> Path:
    """The local file a pretrained build reads; raises MissingWeightsError when absent."""
    spec = get_spec(name)
    path = Path(weights_dir) / spec.weights_file
    if not path.is_file():
        raise MissingWeightsError(name, path, spec.weights.url)
    return path


class WeightsDownloadError(RuntimeError):
    """A weights file could not be fetched (offline, HTTP error, wrong checksum); nothing was kept."""


TORCHVISION_URL = "https://download.pytorch.org/models/"
Progress = Callable[[str, int, int | None], None]  # (file name, bytes so far, total bytes or None)


def weights_url(name: str, base_url: str | None = None) -> str:
    """Where a model's weights file is fetched: torchvision's own URL, or `<base_url>/<file>` (a mirror)."""
    spec = get_spec(name)
    return f"{base_url.rstrip('/')}/{spec.weights_file}" if base_url else spec.weights.url


def download_weights(
    name: str,
    weights_dir: Path | str,
    base_url: str | None = None,
    verify: bool = True,
    progress: Progress | None = None,
    timeout_s: float = 30.0,
) -> Path:
    """Fetch one model's pretrained weights into `weights_dir`; a file already there is kept.

    The only function here that uses the network (`aistudio fetch-weights` and the Training
    page's download both call it); training never does. The file is written beside its final
    name and moved there only once complete and, with `verify`, once its SHA-256 starts with the
    hash in torchvision's file name (`resnet18-f37072fd.pth`).
    """
    import hashlib
    import os
    import urllib.error
    import urllib.request

    spec = get_spec(name)
    path = Path(weights_dir) / spec.weights_file
    if path.is_file():
        return path
    url = weights_url(name, base_url)
    where = urlparse(url).netloc or url
    part = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "aistudio-fetch-weights"}),
                                    timeout=timeout_s) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            if progress:
                progress(spec.weights_file, 0, total)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(spec.weights_file, done, total)
    except urllib.error.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise WeightsDownloadError(
            f"{spec.weights_file}: {where} answered HTTP {exc.code} ({exc.reason}) for {url}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise WeightsDownloadError(
            f"{spec.weights_file}: could not reach {where} ({reason}). The host looks offline: "
            "copy the weights files in from a machine that is online (`aistudio fetch-weights --dest DIR` there), "
            "set AISTUDIO_WEIGHTS_URL to a mirror it can reach, or train from scratch (Pretrained off)"
        ) from exc
    match = torch.hub.HASH_REGEX.search(spec.weights_file)
    if verify and match and not digest.hexdigest().startswith(match.group(1)):
        part.unlink(missing_ok=True)
        raise WeightsDownloadError(
            f"{spec.weights_file}: the file from {where} has SHA-256 {digest.hexdigest()[:12]}…, not "
            f"{match.group(1)}… as its name says; it was not kept (a wrong or damaged file)"
        )
    os.replace(part, path)
    return path


def build_model(
    name: str,
    num_classes: int,
    pretrained: bool,
    weights_dir: Path | str | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """A torchvision model with a head for `num_classes` (never downloads).

    Detection models get `num_classes + 1` outputs: index 0 is torchvision's background, so
    class index `i` of the dataset is model label `i + 1`.
    """
    spec = get_spec(name)
    num_outputs = num_classes + 1 if spec.task == "detection" else num_classes
    model = spec.builder(weights=None, **_builder_kwargs(spec, num_outputs, image_size))
    if pretrained:
        if weights_dir is None:
            raise ValueError("pretrained=True needs weights_dir, the folder holding the weights files.")
        load_pretrained(model, name, weights_dir)
    return model


def _builder_kwargs(spec: ModelSpec, num_outputs: int | None, image_size: int | None) -> dict:
    kwargs = dict(spec.build_kwargs)
    if num_outputs is not None:
        kwargs["num_classes"] = num_outputs
    if spec.task == "detection":
        kwargs["weights_backbone"] = None  # the builders default to downloading one
        if spec.rescales_input:
            size = image_size or spec.default_image_size
            kwargs.update(min_size=size, max_size=size)
    return kwargs


def load_pretrained(model: nn.Module, name: str, weights_dir: Path | str) -> None:
    """Copy the local pretrained weights into `model`, all but the class-dependent head."""
    spec = get_spec(name)
    path = weights_path(name, weights_dir)
    head = re.compile(spec.head_pattern)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not head.match(k)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Checkpoints made with FrozenBatchNorm2d have no BatchNorm step counters.
    missing = [k for k in missing if not head.match(k) and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"'{path}' does not fit model '{name}': missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
