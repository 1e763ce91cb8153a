"""The Ray-free training core on tiny generated images (CPU, random init, no downloads)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ray_jobs.core import (
    MODELS,
    MissingWeightsError,
    TrainConfig,
    build_model,
    eval_transform,
    fit_local,
    list_models,
    load_checkpoint,
    predict_images,
    preprocess_spec,
    train_transform,
)
from ray_jobs.core.catalog import parameter_count
from ray_jobs.core.fit import EVENT_KEYS

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
CLASS_NAMES = ["red", "green", "blue"]


def _noisy(rgb, size, rng) -> np.ndarray:
    pixels = np.array(rgb, dtype=np.int16) + rng.integers(-25, 26, size=(size[1], size[0], 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_classification(folder: Path, per_class: int, seed: int, size=(32, 32)) -> list[dict]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for label, rgb in enumerate(COLOURS):
        for i in range(per_class):
            path = folder / f"{label}_{i}.png"
            Image.fromarray(_noisy(rgb, size, rng)).save(path)
            samples.append({"path": str(path), "label": label})
    return samples


def make_detection(folder: Path, count: int, seed: int, size=(80, 60)) -> list[dict]:
    """Grey images with one or two coloured rectangles; class = colour."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        pixels = _noisy((128, 128, 128), size, rng)
        boxes, labels = [], []
        for _ in range(1 + i % 2):
            label = int(rng.integers(0, 2))
            w, h = int(rng.integers(15, 30)), int(rng.integers(15, 25))
            x, y = int(rng.integers(0, size[0] - w)), int(rng.integers(0, size[1] - h))
            pixels[y : y + h, x : x + w] = COLOURS[label]
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
        path = folder / f"det_{i}.png"
        Image.fromarray(pixels).save(path)
        samples.append({"path": str(path), "boxes": boxes, "labels": labels})
    return samples


def tiny_config(**overrides) -> TrainConfig:
    values = dict(
        model="resnet18",
        num_classes=3,
        class_names=CLASS_NAMES,
        epochs=2,
        batch_size=8,
        learning_rate=1e-3,
        optimizer="adam",
        scheduler="cosine",
        image_size=32,
        augmentations=["hflip"],
        seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory) -> tuple[list[dict], list[dict]]:
    root = tmp_path_factory.mktemp("cls")
    return make_classification(root / "train", 8, seed=1), make_classification(root / "val", 3, seed=2)


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, cls_data):
    """One 2-epoch classification run shared by the tests that read its results."""
    run_dir = tmp_path_factory.mktemp("cls_run")
    events: list[dict] = []
    result = fit_local(tiny_config(), *cls_data, run_dir=run_dir, publish=events.append)
    return run_dir, events, result


# --- catalog -------------------------------------------------------------------------------


def test_catalog_lists_every_model_with_exact_parameter_counts():
    listed = {entry["name"]: entry for entry in list_models()}
    assert set(listed) == {
        "resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
        "convnext_tiny", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2",
        "retinanet_resnet50_fpn_v2", "ssdlite320_mobilenet_v3_large", "fcos_resnet50_fpn",
    }
    assert listed["resnet18"]["parameters"] == 11_689_512  # torchvision's documented count
    assert listed["resnet18"]["default_image_size"] == 224
    assert {e["name"] for e in list_models("detection")} == {
        name for name, spec in MODELS.items() if spec.task == "detection"
    }
    for name, spec in MODELS.items():
        assert spec.params == listed[name]["parameters"] > 0
        assert re.fullmatch(r"[\w.-]+\.pth", spec.weights_file)
    with pytest.raises(ValueError, match="Valid tasks"):
        list_models("segmentation")


@pytest.mark.parametrize("name", list(MODELS))
def test_head_pattern_covers_exactly_the_class_dependent_layers(name):
    """Loading pretrained weights skips these layers, so the pattern must be exact."""
    spec = MODELS[name]
    with torch.device("meta"):
        three = build_model(name, 3, pretrained=False).state_dict()
        four = build_model(name, 4, pretrained=False).state_dict()
    changed = {key for key in three if three[key].shape != four[key].shape}
    assert changed == {key for key in three if re.match(spec.head_pattern, key)}
    assert parameter_count(name) > sum(v.numel() for k, v in three.items() if k in changed)


def test_build_model_heads():
    resnet = build_model("resnet18", 3, pretrained=False).eval()
    assert resnet(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    with torch.device("meta"):
        frcnn = build_model("fasterrcnn_mobilenet_v3_large_fpn", 2, pretrained=False, image_size=256)
    assert frcnn.roi_heads.box_predictor.cls_score.out_features == 3  # + background
    assert frcnn.rpn._pre_nms_top_n == {"training": 300, "testing": 300}
    assert frcnn.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert frcnn.transform.min_size == (256,) and frcnn.transform.max_size == 256


def test_pretrained_loads_local_file_except_head(tmp_path):
    spec = MODELS["resnet18"]
    reference = build_model("resnet18", 1000, pretrained=False)
    torch.save(reference.state_dict(), tmp_path / spec.weights_file)
    model = build_model("resnet18", 3, pretrained=True, weights_dir=tmp_path)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 3


def test_pretrained_detection_loads_in_setup_and_freezes_backbone_batchnorm(tmp_path):
    from ray_jobs.core import DetectionModule

    name = "ssdlite320_mobilenet_v3_large"
    coco = build_model(name, 90, pretrained=False)  # the COCO layout: 91 outputs
    torch.save(coco.state_dict(), tmp_path / MODELS[name].weights_file)
    config = TrainConfig(model=name, num_classes=2, class_names=["a", "b"], pretrained=True, weights_dir=tmp_path)
    module = DetectionModule(config)
    module.setup("fit")
    first = "backbone.features.0.0.0.weight"
    assert torch.equal(module.model.state_dict()[first], coco.state_dict()[first])
    module.train()
    norms = [m for m in module.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert module.model.training and module.model.head.training


def test_missing_weights_error_names_file_and_folder(tmp_path):
    with pytest.raises(MissingWeightsError) as error:
        build_model("ssdlite320_mobilenet_v3_large", 2, pretrained=True, weights_dir=tmp_path)
    message = str(error.value)
    assert "ssdlite320_mobilenet_v3_large_coco-a79551df.pth" in message
    assert str(tmp_path) in message
    assert isinstance(error.value, ValueError)


# --- config and data ------------------------------------------------------------------------


def test_bad_augmentation_and_settings_are_rejected():
    with pytest.raises(ValueError, match="Valid augmentations: hflip, vflip"):
        train_transform("classification", 32, ["hflip", "mixup"])
    with pytest.raises(ValueError, match="mixup"):
        tiny_config(augmentations=["mixup"])
    with pytest.raises(ValueError, match="Valid optimizers: sgd, adam, adamw"):
        tiny_config(optimizer="rmsprop")
    with pytest.raises(ValueError, match="class_names"):
        tiny_config(num_classes=4)
    with pytest.raises(ValueError, match="detection model"):
        tiny_config(task="classification", model="ssdlite320_mobilenet_v3_large")
    with pytest.raises(ValueError, match="Unknown training setting"):
        TrainConfig.from_dict({**tiny_config().to_dict(), "momentum": 0.9})


def test_preprocess_spec_matches_eval_transform(tmp_path):
    path = make_classification(tmp_path, 1, seed=3, size=(50, 37))[0]["path"]
    for task in ("classification", "detection"):
        spec = preprocess_spec(task, 24)
        assert spec["resize"] == "stretch" and spec["layout"] == "NCHW" and spec["channel_order"] == "RGB"
        assert spec["order"] == ["resize", "scale", "normalize"] and spec["interpolation"] == "bilinear"
        size = spec["image_size"]
        resized = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
        normalized = (resized * spec["scale"] - np.float32(spec["mean"])) / np.float32(spec["std"])
        expected = torch.from_numpy(normalized).permute(2, 0, 1)
        actual = eval_transform(task, size)(Image.open(path).convert("RGB"))
        assert actual.shape == (3, size, size)
        torch.testing.assert_close(actual.as_subclass(torch.Tensor), expected, atol=1e-5, rtol=0)


def test_detection_transforms_move_boxes(tmp_path):
    from ray_jobs.core.data import DetectionDataset

    Image.new("RGB", (100, 50)).save(tmp_path / "a.png")
    sample = {"path": str(tmp_path / "a.png"), "boxes": [[10, 10, 20, 30]], "labels": [0]}
    image, target = DetectionDataset([sample], eval_transform("detection", 64))[0]
    assert image.shape == (3, 64, 64)
    torch.testing.assert_close(target["boxes"], torch.tensor([[6.4, 12.8, 12.8, 38.4]]))
    assert target["labels"].tolist() == [1]  # 0 is background in torchvision
    flipped = DetectionDataset([sample], train_transform("detection", 64, ["hflip"]))
    torch.manual_seed(0)
    seen = {tuple(round(v, 1) for v in flipped[0][1]["boxes"][0].tolist()) for _ in range(12)}
    assert seen == {(6.4, 12.8, 12.8, 38.4), (51.2, 12.8, 57.6, 38.4)}


# --- training -------------------------------------------------------------------------------


def test_classification_fit_publishes_events_and_writes_checkpoints(cls_run):
    run_dir, events, result = cls_run
    assert [e["epoch"] for e in events] == [1, 2]
    for event in events:
        assert set(event) == set(EVENT_KEYS)
        assert event["epochs"] == 2
        assert all(isinstance(event[key], float) for key in EVENT_KEYS if key not in ("epoch", "epochs"))
        assert 0.0 <= event["val_metric"] <= 1.0 and event["images_per_s"] > 0
    assert events[1]["lr"] < events[0]["lr"]  # cosine schedule
    assert result["epochs_run"] == 2
    assert result["best_metric"] == max(e["val_metric"] for e in events)
    assert Path(result["best_ckpt"]) == run_dir / "weights" / "best.ckpt"
    assert Path(result["last_ckpt"]).is_file() and Path(result["best_ckpt"]).is_file()
    assert not list((run_dir / "weights").glob("*.tmp"))


def test_should_stop_ends_training_after_the_current_epoch(tmp_path, cls_data):
    events: list[dict] = []
    result = fit_local(
        tiny_config(epochs=3), *cls_data, run_dir=tmp_path, publish=events.append, should_stop=lambda: True
    )
    assert [e["epoch"] for e in events] == [1]
    assert result["epochs_run"] == 1


def test_resume_with_more_epochs_runs_only_the_remaining_ones(tmp_path, cls_run, cls_data):
    run_dir, first_events, first = cls_run
    events: list[dict] = []
    result = fit_local(
        tiny_config(epochs=3), *cls_data, run_dir=tmp_path, publish=events.append, resume_ckpt=first["last_ckpt"]
    )
    assert [(e["epoch"], e["epochs"]) for e in events] == [(3, 3)]
    assert result["epochs_run"] == 3
    assert result["best_metric"] >= first["best_metric"]  # best so far survives the resume


def test_checkpoint_round_trip_predicts_with_the_same_preprocessing(cls_run, cls_data):
    _, _, result = cls_run
    model, meta = load_checkpoint(result["best_ckpt"])
    assert not model.training
    assert meta["task"] == "classification" and meta["model"] == "resnet18"
    assert meta["class_names"] == CLASS_NAMES and meta["image_size"] == 32
    assert meta["preprocess"] == preprocess_spec("classification", 32)
    val = cls_data[1]
    predictions = predict_images(model, meta, [s["path"] for s in val], batch_size=4)
    assert len(predictions) == len(val)
    for prediction in predictions:
        assert len(prediction["probs"]) == 3 and abs(sum(prediction["probs"]) - 1) < 1e-5
        assert prediction["label"] == int(np.argmax(prediction["probs"]))
        assert prediction["class_name"] == CLASS_NAMES[prediction["label"]]
    # Same numbers as the validation data path.
    from ray_jobs.core.data import ClassificationDataset

    image, _ = ClassificationDataset(val[:1], eval_transform("classification", 32))[0]
    with torch.no_grad():
        probs = torch.softmax(model(image[None]), dim=1)[0]
    torch.testing.assert_close(probs, torch.tensor(predictions[0]["probs"]), atol=1e-5, rtol=0)


def test_detection_fit_and_predict_ssdlite(tmp_path):
    pytest.importorskip("pycocotools")  # the mAP backend; absent on some GPU hosts
    train = make_detection(tmp_path / "train", 8, seed=4)
    val = make_detection(tmp_path / "val", 4, seed=5)
    config = TrainConfig(
        model="ssdlite320_mobilenet_v3_large",
        num_classes=2,
        class_names=["red", "green"],
        epochs=1,
        batch_size=4,
        image_size=64,
        augmentations=["hflip", "random_resized_crop"],
    )
    events: list[dict] = []
    result = fit_local(config, train, val, run_dir=tmp_path / "run", publish=events.append)
    assert len(events) == 1 and set(events[0]) == set(EVENT_KEYS)
    assert 0.0 <= events[0]["val_metric"] <= 1.0 and events[0]["val_loss"] > 0
    assert Path(result["best_ckpt"]).is_file()

    model, meta = load_checkpoint(result["best_ckpt"])
    assert meta["task"] == "detection" and meta["preprocess"]["mean"] == [0.0, 0.0, 0.0]
    predictions = predict_images(model, meta, [val[0]["path"]], score_threshold=0.0)
    boxes = torch.tensor(predictions[0]["boxes"]).reshape(-1, 4)
    assert len(boxes) > 0
    assert boxes[:, 2].max() <= 80 + 1e-3 and boxes[:, 3].max() <= 60 + 1e-3  # original 80x60 pixels
    assert set(predictions[0]["labels"]) <= {0, 1}


def test_core_does_not_import_ray():
    """The GPU check host has no Ray: the core must import without it."""
    code = "import sys, ray_jobs.core; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
