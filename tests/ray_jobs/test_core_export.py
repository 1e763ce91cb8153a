"""Exports checked against PyTorch with onnxruntime / TorchScript on CPU, and the bundle's predict.py."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from ray_jobs.core import export as ex
from tests.host import tensorrt_importable, tensorrt_usable

CLS_PRE = {"image_size": 64, "resize": "stretch", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
           "scale": 1 / 255, "channel_order": "RGB", "layout": "NCHW"}
DET_PRE = {**CLS_PRE, "image_size": 320, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
CLASSES = ["cat", "dog", "fox", "owl", "bee", "ant", "elk"]
DET_CLASSES = ["circle", "square", "triangle"]
TOP_K, MIN_SCORE = 15, 0.05  # detection parity: compared explicitly, not the exporter's defaults


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(got: dict, ref: dict, iou_min: float) -> list[tuple[int, int]]:
    """(got index, ref index) pairs: each of `got`'s boxes, best score first, to the unused `ref`
    box of the same label with the highest IoU (at least iou_min) — written here, independently
    of the exporter's own matcher."""
    used, pairs = set(), []
    for i in np.argsort(-got["scores"], kind="stable"):
        best = max((j for j in range(len(ref["boxes"])) if j not in used and ref["labels"][j] == got["labels"][i]),
                   key=lambda j: iou(got["boxes"][i], ref["boxes"][j]), default=None)
        if best is not None and iou(got["boxes"][i], ref["boxes"][best]) >= iou_min:
            used.add(best)
            pairs.append((int(i), best))
    return pairs


def _image(path, size=(97, 75), seed=0):
    """A small structured RGB image (gradients + a block), saved as PNG."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 128.0)], -1)
    arr[h // 4 : h // 2, w // 3 : w // 2] = rng.uniform(0, 255, 3)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=len(CLASSES)).eval()


@pytest.fixture(scope="module")
def cls_batch():
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 64)


@pytest.fixture(scope="module")
def onnx_cls(classifier, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return path, ex.export_onnx(classifier, "classification", CLS_PRE, path)


@pytest.fixture(scope="module")
def detector():
    """SSDLite trained for a few steps: random init gives tied scores, which reorder freely."""
    torch.manual_seed(0)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=len(DET_CLASSES) + 1)
    images = [torch.rand(3, 160, 160) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20, 80, 90], [50, 40, 150, 120]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[30.0, 30, 100, 140]]), "labels": torch.tensor([2])},
    ]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(4):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), torch.stack(images)


@pytest.fixture(scope="module")
def onnx_det(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx_det") / "det.onnx"
    return path, ex.export_onnx(detector[0], "detection", DET_PRE, path)


# --------------------------------------------------------------------------- classification


def test_onnx_classification_dynamic_batch_parity(classifier, cls_batch, onnx_cls):
    path, info = onnx_cls
    assert info["exporter"] == "dynamo" and info["fallback_reason"] is None
    assert isinstance(info["opset"], int) and info["opset"] >= 17
    assert info["dynamic_batch"] and not info["batch_fixed"]
    assert info["inputs"][0]["shape"][1:] == [3, 64, 64] and isinstance(info["inputs"][0]["shape"][0], str)
    assert info["output_names"] == ["logits"]
    assert info["file_size_bytes"] == path.stat().st_size > 1_000_000
    assert not list(path.parent.glob("*.data"))  # single self-contained file
    parity = ex.parity_check(classifier, "classification", path, "onnx", cls_batch)
    assert parity["batch_sizes"] == [1, 3]
    assert parity["max_abs_diff_batch1"] < 1e-4 and parity["max_abs_diff_batchN"] < 1e-4
    assert parity["passed"] and parity["top1_agreement"] == 1.0
    json.dumps(info), json.dumps(parity)


def test_onnx_falls_back_to_legacy_exporter(classifier, cls_batch, tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def dynamo_broken(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("simulated dynamo failure")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_broken)
    info = ex.export_onnx(classifier, "classification", CLS_PRE, tmp_path / "m.onnx")
    assert info["exporter"] == "legacy" and info["opset"] == ex.LEGACY_OPSET
    assert "simulated dynamo failure" in info["fallback_reason"] and info["dynamic_batch"]
    assert ex.parity_check(classifier, "classification", tmp_path / "m.onnx", "onnx", cls_batch)["passed"]


def test_fp16_and_bad_arguments_refused(classifier, tmp_path):
    with pytest.raises(ex.ExportError, match="tensorrt"):
        ex.export_onnx(classifier, "classification", CLS_PRE, tmp_path / "m.onnx", precision="fp16")
    with pytest.raises(ex.ExportError, match="Invalid task"):
        ex.export_onnx(classifier, "segmentation", CLS_PRE, tmp_path / "m.onnx")
    with pytest.raises(ex.ExportError, match="Invalid format"):
        ex.parity_check(classifier, "classification", tmp_path / "m.x", "tflite", torch.zeros(1, 3, 8, 8))


def test_torchscript_classification_parity(classifier, cls_batch, tmp_path):
    info = ex.export_torchscript(classifier, "classification", CLS_PRE, tmp_path / "model.pt")
    assert info["method"] == "trace" and info["dynamic_batch"]
    parity = ex.parity_check(classifier, "classification", tmp_path / "model.pt", "torchscript", cls_batch)
    assert parity["max_abs_diff"] < 1e-4 and parity["passed"]


def test_latency_report(classifier, cls_batch, onnx_cls):
    path, _ = onnx_cls
    report = ex.latency_report(ex.PyTorchRunner(classifier, "classification"),
                               ex.OnnxRunner(path, "classification"), cls_batch, batch_n=4, iters=2, warmup=1)
    assert report["batch_1"]["pytorch"]["batch_size"] == 1 and report["batch_n"]["exported"]["batch_size"] == 4
    for key in ("p50_ms", "mean_ms", "images_per_s"):
        assert report["batch_n"]["exported"][key] > 0
    assert report["batch_1"]["throughput_ratio"] > 0
    json.dumps(report)


def test_tensorrt_availability_is_what_the_host_has(onnx_cls, tmp_path):
    """Usable exactly where TensorRT imports and PyTorch sees a CUDA GPU; elsewhere every
    TensorRT entry point refuses with a reason naming it (the API turns that into 503)."""
    usable, reason = ex.tensorrt_available()
    assert usable == tensorrt_usable(), reason
    if usable:
        return  # the engine itself: test_tensorrt_engine_matches_pytorch (gpu)
    assert "TensorRT" in reason
    path, _ = onnx_cls
    with pytest.raises(ex.ExportError, match="TensorRT"):
        ex.export_tensorrt(path, tmp_path / "m.engine", precision="fp32")
    assert not (tmp_path / "m.engine").exists()
    with pytest.raises(ex.ExportError, match="TensorRT"):
        ex.export_tensorrt(path, tmp_path / "m.engine", precision="fp16")
    if not tensorrt_importable():
        with pytest.raises(ex.ExportError, match="TensorRT"):
            ex.TensorRTRunner(tmp_path / "m.engine", "classification")


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-2), ("fp16", 5e-2)])
def test_tensorrt_engine_matches_pytorch(classifier, cls_batch, onnx_cls, tmp_path, precision, tolerance):
    """On a GPU host with TensorRT: an engine builds from the ONNX file, for a dynamic batch, and
    its logits match PyTorch's at batch 1 and 3 (compared here, not by the exporter's report)."""
    if not tensorrt_importable():
        pytest.skip("TensorRT is not installed on this GPU host (the [gpu] extra); the refusal is tested above")
    path, _ = onnx_cls
    info = ex.export_tensorrt(path, tmp_path / "m.engine", precision=precision, max_batch=4, opt_batch=3)
    assert (tmp_path / "m.engine").stat().st_size > 0 and info["precision"] == precision
    runner = ex.TensorRTRunner(tmp_path / "m.engine", "classification")
    with torch.no_grad():
        want = classifier(cls_batch).numpy()
    for batch in (cls_batch[:1], cls_batch):
        got = np.asarray(runner(batch.cuda()))
        assert got.shape == (len(batch), len(CLASSES))
        assert np.abs(got - want[: len(batch)]).max() < tolerance
        assert (got.argmax(1) == want[: len(batch)].argmax(1)).all()


# --------------------------------------------------------------------------- detection


def test_detection_onnx_and_torchscript_parity(detector, onnx_det, tmp_path):
    model, images = detector
    onnx_path, info = onnx_det
    assert info["exporter"] == "legacy" and info["batch_fixed"] and not info["dynamic_batch"]
    assert info["output_names"] == ["boxes", "scores", "labels"]
    assert info["inputs"][0]["shape"][:2] == [1, 3] and all(isinstance(d, str) for d in info["inputs"][0]["shape"][2:])
    assert any("fixed at 1" in n for n in info["notes"])
    # A seeded second image, so the boxes compared do not depend on which tests ran before.
    other = torch.rand(1, 3, 240, 300, generator=torch.Generator().manual_seed(3))
    for batch in (images, other):  # dynamic H/W
        parity = ex.parity_check(model, "detection", onnx_path, "onnx", batch, top_k=TOP_K, min_score=MIN_SCORE)
        with torch.no_grad():  # the reference set, counted from the model's own output
            outs = model(list(batch))
        assert parity["num_reference"] == sum(min(TOP_K, int((o["scores"] >= MIN_SCORE).sum())) for o in outs) > 0
        assert parity["match_rate"] == 1.0 and parity["passed"]
        assert parity["max_score_diff"] < 1e-4 and parity["max_box_diff"] < 1e-2
    # labels come out 0-based (the model predicts class + 1; background is 0)
    dets = ex.OnnxRunner(onnx_path, "detection")(images[:1])[0]
    assert dets["labels"].min() >= 0 and dets["labels"].max() < len(DET_CLASSES)

    ts = ex.export_torchscript(model, "detection", DET_PRE, tmp_path / "det.pt")
    assert ts["method"] == "script" and ts["batch_fixed"]
    parity = ex.parity_check(model, "detection", tmp_path / "det.pt", "torchscript", images)
    assert parity["match_rate"] == 1.0 and parity["max_score_diff"] < 1e-5


# --------------------------------------------------------------------------- bundles


def _unzip_and_predict(zip_path, image, tmp_path, *args):
    out = tmp_path / "bundle"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(out)
    proc = subprocess.run([sys.executable, str(out / "predict.py"), str(image), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_onnx_classification_bundle_predicts_like_pytorch(classifier, cls_batch, onnx_cls, tmp_path):
    path, info = onnx_cls
    image = _image(tmp_path / "img.png")
    x, _ = ex.preprocess_image(image, CLS_PRE)
    with torch.no_grad():
        probs = torch.softmax(classifier(torch.from_numpy(x)), 1)[0]
    info = {**info, "parity": ex.parity_check(classifier, "classification", path, "onnx", cls_batch),
            "latency": ex.latency_report(ex.PyTorchRunner(classifier, "classification"),
                                         ex.OnnxRunner(path, "classification"), cls_batch, batch_n=2, iters=1)}
    result = ex.write_bundle(tmp_path / "b.zip", path, CLASSES, CLS_PRE, "classification", info, "onnx")
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
        assert json.loads(zf.read("labels.json")) == CLASSES
        assert json.loads(zf.read("preprocess.json")) == CLS_PRE
        assert json.loads(zf.read("export.json"))["task"] == "classification"
    assert names == {"model.onnx", "labels.json", "preprocess.json", "export.json", "predict.py", "README.md",
                     "aistudio_prediction.py"}
    assert set(result["entries"]) == names
    assert f"opset: {info['opset']}" in readme and "max abs logit difference" in readme and "| 2 |" in readme

    pred = _unzip_and_predict(tmp_path / "b.zip", image, tmp_path)
    assert pred["label"] == CLASSES[int(probs.argmax())]
    assert pred["score"] == pytest.approx(float(probs.max()), abs=1e-4)


def test_torchscript_classification_bundle(classifier, tmp_path):
    info = ex.export_torchscript(classifier, "classification", CLS_PRE, tmp_path / "m.pt")
    ex.write_bundle(tmp_path / "b.zip", tmp_path / "m.pt", CLASSES, CLS_PRE, "classification", info, "torchscript")
    image = _image(tmp_path / "img.jpg", seed=3)
    x, _ = ex.preprocess_image(image, CLS_PRE)
    with torch.no_grad():
        top = int(classifier(torch.from_numpy(x)).argmax())
    assert _unzip_and_predict(tmp_path / "b.zip", image, tmp_path)["label"] == CLASSES[top]


def test_onnx_detection_bundle_boxes_in_original_pixels(detector, onnx_det, tmp_path):
    model, _ = detector
    onnx_path, info = onnx_det
    ex.write_bundle(tmp_path / "d.zip", onnx_path, DET_CLASSES, DET_PRE, "detection", info, "onnx")
    with zipfile.ZipFile(tmp_path / "d.zip") as zf:
        assert "batch: fixed at 1" in zf.read("README.md").decode()
    image = _image(tmp_path / "img.png", size=(200, 150))
    x, (w, h) = ex.preprocess_image(image, DET_PRE)
    ref = ex.PyTorchRunner(model, "detection")(x)[0]
    pred = _unzip_and_predict(tmp_path / "d.zip", image, tmp_path, "--score-threshold", "0")
    assert pred["scores"] == sorted(pred["scores"], reverse=True)
    assert all(name == DET_CLASSES[i] for name, i in zip(pred["label_names"], pred["labels"]))
    # the bundle's top boxes, scaled back to 200x150, are PyTorch's (matched: near-tied scores reorder)
    scale = np.array([w / 320, h / 320, w / 320, h / 320])
    got = {k: np.asarray(pred[k], dtype=np.float64)[:10] for k in ("boxes", "scores", "labels")}
    ref_scaled = {**ref, "boxes": ref["boxes"] * scale}
    pairs = match_boxes(got, ref_scaled, iou_min=0.9)
    assert len(pairs) == 10
    assert max(np.abs(got["boxes"][i] - ref_scaled["boxes"][j]).max() for i, j in pairs) < 0.05
    assert max(abs(got["scores"][i] - ref_scaled["scores"][j]) for i, j in pairs) < 1e-5
    assert all(b[2] <= w + 0.01 and b[3] <= h + 0.01 for b in pred["boxes"])  # inside the 200x150 image
