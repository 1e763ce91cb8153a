"""Issue #13 item 14: the bundle's files are readable by everyone who can read the ZIP (they unpacked
0600), and its predict.py takes a folder or several files and prints one JSON line per image, an
error line (not a traceback) for an image it cannot read. Issue #16: the preprocessing it ships is the
one file the endpoints import (`ray_jobs/prediction.py`)."""

import json
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

from ray_jobs.core import export as ex
from tests.ray_jobs.test_core_export import CLASSES, CLS_PRE, _image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def onnx_cls(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES)).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return path, ex.export_onnx(model, "classification", CLS_PRE, path)


def test_bundle_files_unpack_readable_by_all(onnx_cls, tmp_path):
    path, info = onnx_cls
    ex.write_bundle(tmp_path / "b.zip", path, CLASSES, CLS_PRE, "classification", info, "onnx")
    out = tmp_path / "unzipped"
    subprocess.run(["unzip", "-q", str(tmp_path / "b.zip"), "-d", str(out)], check=True)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes.pop("predict.py") == 0o755
    assert modes and all(mode == 0o644 for mode in modes.values()), modes
    # the shared preprocessing travels verbatim: the endpoints import this very file
    assert (out / "aistudio_prediction.py").read_text() == (REPO / "ray_jobs" / "prediction.py").read_text()


def test_predict_py_takes_a_folder_and_several_files(onnx_cls, tmp_path):
    path, info = onnx_cls
    ex.write_bundle(tmp_path / "b.zip", path, CLASSES, CLS_PRE, "classification", info, "onnx")
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        zf.extractall(tmp_path / "bundle")
    folder = tmp_path / "images"
    folder.mkdir()
    good = [_image(folder / "a.png", seed=1), _image(folder / "b.jpg", seed=2)]
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "notes.txt").write_text("not an image, not listed")

    def predict(*args):
        run = subprocess.run([sys.executable, "predict.py", *map(str, args)], cwd=tmp_path / "bundle",
                             capture_output=True, text=True, timeout=120)
        assert "Traceback" not in run.stderr, run.stderr
        return run.returncode, [json.loads(line) for line in run.stdout.splitlines()]

    code, lines = predict(folder)
    assert code == 1  # one image failed
    assert [Path(x["image"]).name for x in lines] == ["a.png", "b.jpg", "broken.jpg"]
    assert all(x["label"] in CLASSES and len(x["top"]) == 5 for x in lines[:2])
    assert "error" in lines[2] and "label" not in lines[2]

    code, several = predict(*good)
    assert code == 0 and several == lines[:2]
    code, missing = predict(folder / "nope.png")
    assert code == 1 and "no such file" in missing[0]["error"]
