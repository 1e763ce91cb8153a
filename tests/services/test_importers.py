"""Dataset import logic: formats, auto-detection, warnings, images, ZIP safety (no DB, no web)."""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from appliance.store.errors import InvalidDataset, PayloadTooLarge
from appliance.importers import (
    UnreadableImage,
    check_zip,
    extract_zip,
    make_thumbnail,
    parse_source,
    probe_image,
    store_image,
)

W, H = 40, 20  # every test image is 40x20 unless said otherwise


# --- builders -------------------------------------------------------------------------------


def image(path: Path, size=(W, H), orientation: int | None = None, color=(200, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, exif=exif)
    else:
        im.save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def coco_doc(images: list[tuple[int, str]], anns: list[tuple[int, int, list]], cats: list[tuple[int, str]]) -> str:
    return json.dumps({
        "images": [{"id": i, "file_name": f, "width": W, "height": H} for i, f in images],
        "annotations": [
            {"id": n, "image_id": i, "category_id": c, "bbox": b, "iscrowd": 0} for n, (i, c, b) in enumerate(anns, 1)
        ],
        "categories": [{"id": i, "name": name} for i, name in cats],
    })  # fmt: skip


def folder_flat(root: Path) -> None:
    image(root / "cat" / "a.jpg")
    image(root / "cat" / "b.png")
    image(root / "dog" / "c.jpg")


def folder_nested(root: Path) -> None:
    image(root / "train" / "cat" / "a.jpg")
    image(root / "train" / "dog" / "b.jpg")
    image(root / "valid" / "cat" / "c.jpg")
    image(root / "test" / "dog" / "d.jpg")


def csv_classification(root: Path) -> None:
    image(root / "images" / "a.jpg")  # found through the images/ fallback
    image(root / "b.jpg")
    write(root / "labels.csv", "filename,label\na.jpg,cat\nb.jpg,dog\n")


def csv_detection(root: Path) -> None:
    image(root / "a.jpg")
    image(root / "b.jpg")
    image(root / "bg.jpg")
    write(root / "boxes.csv", "a.jpg,1,2,11,12,cat\na.jpg,20,0,30,10,dog\nb.jpg,0,0,5,5,cat\nbg.jpg,,,,,\n")


def coco_standard(root: Path) -> None:
    image(root / "images" / "sub" / "a.jpg")
    image(root / "images" / "b.jpg")
    doc = coco_doc(
        images=[(10, "sub/a.jpg"), (11, "b.jpg")],
        anns=[(10, 7, [2, 3, 10, 5]), (10, 3, [0, 0, 4, 4]), (11, 7, [1, 1, 2, 2])],
        cats=[(3, "person"), (7, "car"), (12, "unused")],  # non-contiguous ids, one never used
    )
    write(root / "annotations" / "instances_default.json", doc)


def coco_roboflow(root: Path) -> None:
    cats = [(0, "shapes"), (1, "square"), (2, "circle")]  # id 0: Roboflow's super-category
    for subset, name in (("train", "a.jpg"), ("valid", "b.jpg")):
        image(root / subset / name)
        doc = coco_doc([(0, name)], [(0, 1, [1, 1, 10, 10]), (0, 2, [20, 5, 5, 5])], cats)
        write(root / subset / "_annotations.coco.json", doc)


def coco_label_studio(root: Path) -> None:
    image(root / "images" / "a.jpg")
    write(root / "result.json", coco_doc([(0, "images\\a.jpg")], [(0, 0, [1, 1, 10, 10])], [(0, "cat")]))


def _yolo_pair(root: Path, image_rel: str, label_rel: str, text: str = "0 0.5 0.5 0.5 0.5\n") -> None:
    image(root / image_rel)
    write(root / label_rel, text)


def yolo_yaml_list(root: Path) -> None:
    _yolo_pair(root, "images/a.jpg", "labels/a.txt", "0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.1 0.1\n")
    write(root / "data.yaml", "names: [cat, dog]\nnc: 2\n")


def yolo_yaml_dict(root: Path) -> None:
    _yolo_pair(root, "images/a.jpg", "labels/a.txt", "3 0.5 0.5 0.5 0.5\n")
    write(root / "data.yaml", "names:\n  0: cat\n  3: dog\n")


def yolo_classes_txt(root: Path) -> None:  # Label Studio's YOLO export
    _yolo_pair(root, "images/a.jpg", "labels/a.txt")
    write(root / "classes.txt", "cat\ndog\n")


def yolo_ultralytics(root: Path) -> None:
    _yolo_pair(root, "images/train/a.jpg", "labels/train/a.txt")
    _yolo_pair(root, "images/val/b.jpg", "labels/val/b.txt")
    write(root / "data.yaml", "path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n")


def yolo_roboflow(root: Path) -> None:
    _yolo_pair(root, "train/images/a.jpg", "train/labels/a.txt")
    _yolo_pair(root, "valid/images/b.jpg", "valid/labels/b.txt")
    write(root / "data.yaml", "train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['cat', 'dog']\n")


def yolo_cvat(root: Path) -> None:  # CVAT "YOLO 1.1": labels beside the images
    _yolo_pair(root, "obj_train_data/a.jpg", "obj_train_data/a.txt")
    write(root / "obj.names", "cat\ndog\n")


CASES = {
    # builder: (format, task, classes, {relpath: subset_hint})
    folder_flat: ("folder", "classification", ["cat", "dog"], {"cat/a.jpg": None, "cat/b.png": None, "dog/c.jpg": None}),
    folder_nested: ("folder", "classification", ["cat", "dog"],
                    {"train/cat/a.jpg": "train", "train/dog/b.jpg": "train", "valid/cat/c.jpg": "val", "test/dog/d.jpg": "test"}),
    csv_classification: ("csv", "classification", ["cat", "dog"], {"images/a.jpg": None, "b.jpg": None}),
    csv_detection: ("csv", "detection", ["cat", "dog"], {"a.jpg": None, "b.jpg": None, "bg.jpg": None}),
    coco_standard: ("coco", "detection", ["person", "car"], {"images/sub/a.jpg": None, "images/b.jpg": None}),
    coco_roboflow: ("coco", "detection", ["square", "circle"], {"train/a.jpg": "train", "valid/b.jpg": "val"}),
    coco_label_studio: ("coco", "detection", ["cat"], {"images/a.jpg": None}),
    yolo_yaml_list: ("yolo", "detection", ["cat", "dog"], {"images/a.jpg": None}),
    yolo_yaml_dict: ("yolo", "detection", ["cat", "dog"], {"images/a.jpg": None}),
    yolo_classes_txt: ("yolo", "detection", ["cat", "dog"], {"images/a.jpg": None}),
    yolo_ultralytics: ("yolo", "detection", ["cat", "dog"], {"images/train/a.jpg": "train", "images/val/b.jpg": "val"}),
    yolo_roboflow: ("yolo", "detection", ["cat", "dog"], {"train/images/a.jpg": "train", "valid/images/b.jpg": "val"}),
    yolo_cvat: ("yolo", "detection", ["cat", "dog"], {"obj_train_data/a.jpg": None}),
}  # fmt: skip


def boxes_of(parsed, relpath):
    item = next(i for i in parsed.items if i.relpath == relpath)
    return [(*(round(v, 6) for v in (b.x1, b.y1, b.x2, b.y2)), b.label) for b in item.boxes]


def warned(parsed, file: str, reason: str) -> bool:
    return any(w.file == file and reason in w.reason for w in parsed.warnings)


# --- every format, explicit and auto-detected -----------------------------------------------


@pytest.mark.parametrize("build", CASES, ids=lambda b: b.__name__)
@pytest.mark.parametrize("auto", [False, True], ids=["explicit", "auto"])
def test_formats(tmp_path, build, auto):
    fmt, task, classes, hints = CASES[build]
    build(tmp_path)
    parsed = parse_source(tmp_path, "auto" if auto else fmt, task)
    assert (parsed.format, parsed.task, parsed.classes) == (fmt, task, classes)
    assert {i.relpath: i.subset_hint for i in parsed.items} == hints
    assert parsed.warnings == []
    assert parsed.detected.startswith("Auto-detected") == auto
    for item in parsed.items:
        assert item.source == tmp_path / item.relpath
        assert (item.info.width, item.info.height) == (W, H)
        if task == "classification":
            assert item.label in classes and item.boxes == []
        else:
            assert item.label is None and all(b.label in classes for b in item.boxes)


def test_yolo_detected_sentence_and_boxes(tmp_path):
    yolo_ultralytics(tmp_path)
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert parsed.detected == "YOLO layout: data.yaml with 2 classes, images/train/ + images/val/"
    assert boxes_of(parsed, "images/train/a.jpg") == [(10, 5, 30, 15, "cat")]  # 0.5 0.5 0.5 0.5 of 40x20


def test_yolo_dict_ids_and_polygon(tmp_path):
    yolo_yaml_dict(tmp_path)
    write(tmp_path / "labels" / "a.txt", "3 0.5 0.5 0.5 0.5\n0 0.1 0.2 0.5 0.1 0.3 0.6\n")
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert boxes_of(parsed, "images/a.jpg") == [(10, 5, 30, 15, "dog"), (4, 2, 20, 12, "cat")]


def test_csv_detection_boxes_and_background(tmp_path):
    csv_detection(tmp_path)
    parsed = parse_source(tmp_path, "csv", "detection")
    assert boxes_of(parsed, "a.jpg") == [(1, 2, 11, 12, "cat"), (20, 0, 30, 10, "dog")]
    assert boxes_of(parsed, "bg.jpg") == []
    assert "boxes.csv" in parsed.detected


def test_csv_header_by_name_roboflow_tf_csv(tmp_path):
    image(tmp_path / "train" / "a.jpg")
    write(tmp_path / "train" / "_annotations.csv", "filename,width,height,class,xmin,ymin,xmax,ymax\na.jpg,40,20,cat,1,2,3,4\n")
    parsed = parse_source(tmp_path, "auto", "detection")
    assert parsed.format == "csv"
    assert boxes_of(parsed, "train/a.jpg") == [(1, 2, 3, 4, "cat")]
    assert parsed.items[0].subset_hint == "train"


def test_coco_boxes_unused_categories_and_crowd(tmp_path):
    coco_standard(tmp_path)
    path = tmp_path / "annotations" / "instances_default.json"
    doc = json.loads(path.read_text())
    doc["annotations"].append({"id": 99, "image_id": 11, "category_id": 3, "bbox": [0, 0, 40, 20], "iscrowd": 1})
    path.write_text(json.dumps(doc))
    parsed = parse_source(tmp_path, "coco", "detection")
    assert parsed.classes == ["person", "car"]  # "unused" (id 12) has no annotation
    assert boxes_of(parsed, "images/sub/a.jpg") == [(2, 3, 12, 8, "car"), (0, 0, 4, 4, "person")]
    assert warned(parsed, "annotations/instances_default.json", "1 crowd annotation (iscrowd=1) skipped")


def test_coco_roboflow_super_category_is_not_a_class(tmp_path):
    coco_roboflow(tmp_path)
    parsed = parse_source(tmp_path, "coco", "detection")
    assert "shapes" not in parsed.classes
    assert "train/_annotations.coco.json" in parsed.detected


def test_folder_stray_image_warns(tmp_path):
    folder_nested(tmp_path)
    image(tmp_path / "loose.jpg")
    image(tmp_path / "train" / "loose.jpg")
    parsed = parse_source(tmp_path, "folder", "classification")
    assert warned(parsed, "loose.jpg", "not inside a class folder")
    assert warned(parsed, "train/loose.jpg", "not inside a class folder")


def test_folder_class_named_like_a_subset(tmp_path):
    image(tmp_path / "test" / "a.jpg")  # images directly inside: a class called "test"
    image(tmp_path / "other" / "b.jpg")
    parsed = parse_source(tmp_path, "folder", "classification")
    assert parsed.classes == ["other", "test"]


def test_progress_reports_every_image(tmp_path):
    folder_flat(tmp_path)
    calls = []
    parse_source(tmp_path, "folder", "classification", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


# --- auto detection failures and task mismatch ----------------------------------------------


def test_auto_ambiguous(tmp_path):
    coco_label_studio(tmp_path)
    yolo_yaml_list(tmp_path)
    with pytest.raises(InvalidDataset, match=r"ambiguous.*coco: result.json.*yolo: data.yaml"):
        parse_source(tmp_path, "auto", "detection")


def test_auto_nothing_recognised(tmp_path):
    write(tmp_path / "notes.txt", "hello")
    image(tmp_path / "loose.jpg")
    with pytest.raises(InvalidDataset, match=r"no known dataset layout.*instances_\*\.json.*data\.yaml.*\*\.csv.*class"):
        parse_source(tmp_path, "auto", "classification")


@pytest.mark.parametrize(
    "build,fmt,task",
    [
        (folder_flat, "folder", "detection"),
        (yolo_yaml_list, "yolo", "classification"),
        (coco_standard, "coco", "classification"),
        (csv_detection, "csv", "classification"),
        (csv_classification, "csv", "detection"),
        (csv_classification, "auto", "detection"),
    ],
)
def test_task_mismatch(tmp_path, build, fmt, task):
    build(tmp_path)
    with pytest.raises(InvalidDataset, match=f"but this is a {task} project"):
        parse_source(tmp_path, fmt, task)


# --- per-item problems are warnings ---------------------------------------------------------


def test_box_warnings(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    write(tmp_path / "data.yaml", "names: [cat]\n")
    write(
        tmp_path / "labels" / "a.txt",
        "0 0.5 0.5 0.5 0.5\n"  # fine: 10,5,30,15
        "0 1.5 0.5 0.2 0.2\n"  # fully outside
        "0 0.9 0.5 0.4 0.4\n"  # x 28..44: clipped to 40
        "0 0.5 0.5 0 0.3\n"  # zero width
        "7 0.5 0.5 0.2 0.2\n"  # unknown class id
        "0 0.5 1.0 0.5 0.08\n",  # y 19.2..20.8: overshoot under 1 px, clipped silently
    )
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert boxes_of(parsed, "images/a.jpg") == [(10, 5, 30, 15, "cat"), (28, 6, 40, 14, "cat"), (10, 19.2, 30, 20, "cat")]
    assert warned(parsed, "images/a.jpg", "box outside the image (labels/a.txt line 2)")
    assert warned(parsed, "images/a.jpg", "box clipped to the image (labels/a.txt line 3)")
    assert warned(parsed, "images/a.jpg", "zero-area box (labels/a.txt line 4)")
    assert warned(parsed, "labels/a.txt", "line 5: unknown class id 7")
    assert len(parsed.warnings) == 4


def test_yolo_missing_and_empty_label_files(tmp_path):
    yolo_yaml_list(tmp_path)
    image(tmp_path / "images" / "nolabel.jpg")
    image(tmp_path / "images" / "background.jpg")
    write(tmp_path / "labels" / "background.txt", "")
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert sorted(i.relpath for i in parsed.items) == ["images/a.jpg", "images/background.jpg"]
    assert boxes_of(parsed, "images/background.jpg") == []
    assert warned(parsed, "images/nolabel.jpg", "missing label file labels/nolabel.txt")


def test_image_whose_boxes_all_fail_is_skipped(tmp_path):
    _yolo_pair(tmp_path, "images/a.jpg", "labels/a.txt")
    _yolo_pair(tmp_path, "images/b.jpg", "labels/b.txt", "0 2 2 0.1 0.1\n")  # outside
    _yolo_pair(tmp_path, "images/c.jpg", "labels/c.txt", "5 0.5 0.5 0.1 0.1\n")  # unknown class
    write(tmp_path / "classes.txt", "cat\n")
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert [i.relpath for i in parsed.items] == ["images/a.jpg"]
    assert warned(parsed, "images/b.jpg", "no valid box left")
    assert warned(parsed, "images/c.jpg", "no valid box left")


def test_corrupt_images_warn(tmp_path):
    folder_flat(tmp_path)
    write(tmp_path / "cat" / "bad.jpg", "not an image")
    image(tmp_path / "dog" / "big.jpg", size=(400, 300))
    (tmp_path / "dog" / "big.jpg").write_bytes((tmp_path / "dog" / "big.jpg").read_bytes()[:300])
    parsed = parse_source(tmp_path, "folder", "classification")
    assert sorted(i.relpath for i in parsed.items) == ["cat/a.jpg", "cat/b.png", "dog/c.jpg"]
    assert warned(parsed, "cat/bad.jpg", "unreadable image")
    assert warned(parsed, "dog/big.jpg", "unreadable image")


def test_missing_image_files_warn(tmp_path):
    coco_standard(tmp_path)
    (tmp_path / "images" / "b.jpg").unlink()
    parsed = parse_source(tmp_path, "coco", "detection")
    assert warned(parsed, "annotations/instances_default.json", "image 11: missing image file b.jpg")
    csv_classification(tmp_path / "c")
    write(tmp_path / "c" / "labels.csv", "filename,label\na.jpg,cat\ngone.jpg,dog\n../../etc/passwd,dog\n")
    parsed = parse_source(tmp_path / "c", "csv", "classification")
    assert warned(parsed, "labels.csv", "line 3: missing image file gone.jpg")
    assert warned(parsed, "labels.csv", "line 4: missing image file ../../etc/passwd")


def test_coco_unknown_category_warns(tmp_path):
    coco_label_studio(tmp_path)
    write(tmp_path / "result.json", coco_doc([(0, "images/a.jpg")], [(0, 0, [1, 1, 5, 5]), (0, 9, [1, 1, 5, 5])], [(0, "cat")]))
    parsed = parse_source(tmp_path, "coco", "detection")
    assert warned(parsed, "result.json", "annotation 2: unknown category id 9")


def test_nothing_valid_is_an_error(tmp_path):
    write(tmp_path / "cat" / "a.jpg", "garbage")
    write(tmp_path / "dog" / "b.jpg", "garbage")
    with pytest.raises(InvalidDataset, match=r"no usable image \(2 problems, first: cat/a.jpg: unreadable"):
        parse_source(tmp_path, "folder", "classification")


# --- malformed annotation files are errors naming file and line -----------------------------


def test_bad_json(tmp_path):
    coco_standard(tmp_path)
    write(tmp_path / "annotations" / "instances_default.json", '{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(InvalidDataset, match=r"annotations/instances_default.json line 3 column \d+: invalid JSON"):
        parse_source(tmp_path, "coco", "detection")


def test_json_not_coco(tmp_path):
    write(tmp_path / "annotations.json", '{"images": []}')
    with pytest.raises(InvalidDataset, match="annotations.json: not a COCO instances file"):
        parse_source(tmp_path, "coco", "detection")


def test_bad_yaml(tmp_path):
    yolo_yaml_list(tmp_path)
    write(tmp_path / "data.yaml", "nc: 2\nnames: [cat, dog\nval: x\n")
    with pytest.raises(InvalidDataset, match=r"data.yaml line \d+: invalid YAML"):
        parse_source(tmp_path, "yolo", "detection")


def test_yaml_without_names(tmp_path):
    yolo_yaml_list(tmp_path)
    write(tmp_path / "data.yaml", "nc: 2\n")
    with pytest.raises(InvalidDataset, match="data.yaml: 'names' must be"):
        parse_source(tmp_path, "yolo", "detection")


def test_yolo_without_class_names(tmp_path):
    _yolo_pair(tmp_path, "images/a.jpg", "labels/a.txt")
    with pytest.raises(InvalidDataset, match="no YOLO class names.*data.yaml.*classes.txt"):
        parse_source(tmp_path, "auto", "detection")


def test_bad_yolo_line(tmp_path):
    yolo_yaml_list(tmp_path)
    write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n0 0.5 zero 0.5 0.5\n")
    with pytest.raises(InvalidDataset, match="labels/a.txt line 2: expected 'class cx cy w h'"):
        parse_source(tmp_path, "yolo", "detection")
    write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.5\n")
    with pytest.raises(InvalidDataset, match="labels/a.txt line 1: 4 values"):
        parse_source(tmp_path, "yolo", "detection")


@pytest.mark.parametrize(
    "text,message",
    [
        ("filename,label\na.jpg,cat\nb.jpg,dog,extra\n", "labels.csv line 3: expected 2 columns"),
        ("a.jpg,cat,x\n", "labels.csv line 1: expected 2 columns .* or 6 .*, got 3"),
        ("a.jpg,1,2,3,4,cat\na.jpg,1,two,3,4,cat\n", "labels.csv line 2: ymin 'two' is not a number"),
        ("filename,xmin,label\na.jpg,1,cat\n", "labels.csv line 1: the header has xmin but needs all"),
    ],
)
def test_bad_csv(tmp_path, text, message):
    csv_classification(tmp_path)
    write(tmp_path / "labels.csv", text)
    with pytest.raises(InvalidDataset, match=message):
        parse_source(tmp_path, "csv", "classification")


def test_several_unrelated_csvs(tmp_path):
    csv_classification(tmp_path)
    write(tmp_path / "other.csv", "a.jpg,cat\n")
    with pytest.raises(InvalidDataset, match=r"several CSV files at the root \(labels.csv, other.csv\)"):
        parse_source(tmp_path, "csv", "classification")


# --- images ---------------------------------------------------------------------------------


def test_probe_hashes_the_bytes(tmp_path):
    path = image(tmp_path / "a.png")
    info = probe_image(path)
    assert (info.width, info.height, info.format, info.needs_transpose) == (W, H, "PNG", False)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_exif_rotated_jpeg(tmp_path):
    src = image(tmp_path / "rot.jpg", orientation=6)  # stored 40x20, displayed 20x40
    info = probe_image(src)
    assert (info.width, info.height, info.needs_transpose) == (H, W, True)
    stored = store_image(src, tmp_path / "out" / "rot.jpg", info)
    assert stored == info
    with Image.open(tmp_path / "out" / "rot.jpg") as im:
        assert im.size == (H, W)
        assert im.getexif().get(0x0112, 1) == 1
    item = parse_source(_folder_with(tmp_path / "ds", src), "folder", "classification").items[0]
    assert (item.info.width, item.info.height) == (H, W)


def _folder_with(root: Path, src: Path) -> Path:
    (root / "cat").mkdir(parents=True)
    (root / "cat" / src.name).write_bytes(src.read_bytes())
    image(root / "dog" / "d.jpg")
    return root


def test_store_copies_bytes_when_upright(tmp_path):
    src = image(tmp_path / "a.jpg", orientation=1)
    info = store_image(src, tmp_path / "out" / "a.jpg")  # no info: probes itself
    assert (tmp_path / "out" / "a.jpg").read_bytes() == src.read_bytes()
    assert info == probe_image(src)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.jpg"]  # no temp file left


def test_unreadable_image_names_the_file(tmp_path):
    bad = write(tmp_path / "bad.png", "nope")
    with pytest.raises(UnreadableImage, match="bad.png: unreadable image"):
        probe_image(bad)
    with pytest.raises(UnreadableImage, match="bad.png"):
        store_image(bad, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_thumbnail(tmp_path):
    src = image(tmp_path / "big.png", size=(600, 300))
    make_thumbnail(src, tmp_path / "thumbs" / "big.jpg")
    with Image.open(tmp_path / "thumbs" / "big.jpg") as im:
        assert (im.format, im.size) == ("JPEG", (256, 128))
    assert [p.name for p in (tmp_path / "thumbs").iterdir()] == ["big.jpg"]


# --- ZIP safety -----------------------------------------------------------------------------


def make_zip(path: Path, entries: dict, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def symlink_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", "fine")
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    "build,error,message",
    [
        (lambda p: make_zip(p, {"ok.txt": "x", "../evil.txt": "x"}), InvalidDataset, r"\.\./evil.txt points outside"),
        (lambda p: make_zip(p, {"a/../../evil.txt": "x"}), InvalidDataset, "points outside"),
        (lambda p: make_zip(p, {"/tmp/evil.txt": "x"}), InvalidDataset, "/tmp/evil.txt has an absolute path"),
        (lambda p: make_zip(p, {"C:\\evil.txt": "x"}), InvalidDataset, "absolute path"),
        (symlink_zip, InvalidDataset, "link is a symbolic link"),
        (lambda p: make_zip(p, {"bomb.bin": b"\0" * (2 << 20)}), InvalidDataset, "bomb.bin expands .*ZIP bomb"),
        (lambda p: make_zip(p, {"big.bin": b"x" * 5000}, zipfile.ZIP_STORED), PayloadTooLarge, "5000 bytes, over the 4096"),
        (lambda p: make_zip(p, {str(i): "" for i in range(6)}), InvalidDataset, "6 entries, more than the 5"),
        (lambda p: (p.write_bytes(b"PK\x03\x04 definitely not a zip" * 10), p)[1], InvalidDataset, "not a ZIP archive"),
    ],
    ids=["slip", "nested-slip", "absolute", "windows-drive", "symlink", "bomb", "too-large", "too-many", "not-a-zip"],
)
def test_zip_rejected_before_writing(tmp_path, build, error, message):
    archive = build(tmp_path / "upload.zip")
    dest = tmp_path / "dest"
    with pytest.raises(error, match=message) as caught:
        check_zip(archive, max_total_bytes=4096, max_entries=5)
    assert "upload.zip" in caught.value.message
    with pytest.raises(error, match=message):
        extract_zip(archive, dest, max_total_bytes=4096, max_entries=5)
    assert not dest.exists()


def test_zip_lying_about_sizes_leaves_dest_empty(tmp_path):
    archive = make_zip(tmp_path / "upload.zip", {"a.txt": "first", "b.txt": b"y" * 100}, zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    header = data.rindex(b"PK\x01\x02")  # b.txt's central directory record
    data[header + 24 : header + 28] = (10).to_bytes(4, "little")  # claims 10 bytes, holds 100
    archive.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(InvalidDataset, match="upload.zip: cannot extract b.txt"):
        extract_zip(archive, dest, max_total_bytes=1 << 20)
    assert list(dest.iterdir()) == []


def test_zip_extracts_single_top_folder_without_junk(tmp_path):
    image(tmp_path / "src.jpg")
    archive = make_zip(
        tmp_path / "upload.zip",
        {
            "ds/": "",
            "ds/cat/a.jpg": (tmp_path / "src.jpg").read_bytes(),
            "ds/dog/b.jpg": (tmp_path / "src.jpg").read_bytes(),
            "ds/.DS_Store": "junk",
            "__MACOSX/ds/._a.jpg": "junk",
        },
    )
    root = extract_zip(archive, tmp_path / "dest", max_total_bytes=1 << 20)
    assert root == tmp_path / "dest" / "ds"
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in (tmp_path / "dest").rglob("*")) == [
        "ds", "ds/cat", "ds/cat/a.jpg", "ds/dog", "ds/dog/b.jpg",
    ]  # fmt: skip
    assert parse_source(root, "auto", "classification").classes == ["cat", "dog"]


def test_zip_with_several_top_entries_returns_dest(tmp_path):
    archive = make_zip(tmp_path / "upload.zip", {"data.yaml": "names: [a]\n", "images/a.jpg": b"x"})
    assert extract_zip(archive, tmp_path / "dest", max_total_bytes=1 << 20) == tmp_path / "dest"
    assert [i.filename for i in check_zip(archive, max_total_bytes=1 << 20)] == ["data.yaml", "images/a.jpg"]


def test_csv_row_warnings(tmp_path):
    csv_detection(tmp_path)
    write(tmp_path / "boxes.csv", "a.jpg,1,2,11,12,cat\nb.jpg,1,2,11,12,\n,1,2,3,4,cat\n")
    parsed = parse_source(tmp_path, "csv", "detection")
    assert [i.relpath for i in parsed.items] == ["a.jpg"]
    assert warned(parsed, "boxes.csv", "line 2: box without a label")
    assert warned(parsed, "b.jpg", "no valid box left")
    assert warned(parsed, "boxes.csv", "line 3: no file name")
    csv_classification(tmp_path / "c")
    write(tmp_path / "c" / "labels.csv", "a.jpg,cat\na.jpg,dog\nb.jpg,\nb.jpg,dog\n")
    parsed = parse_source(tmp_path / "c", "csv", "classification")
    assert {i.relpath: i.label for i in parsed.items} == {"images/a.jpg": "cat", "b.jpg": "dog"}
    assert warned(parsed, "labels.csv", "line 2: a.jpg is already labelled 'cat'")
    assert warned(parsed, "labels.csv", "line 3: no label")


def test_non_image_decoders_are_refused(tmp_path):
    eps = write(tmp_path / "x.jpg", "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(UnreadableImage, match="x.jpg"):
        probe_image(eps)  # Pillow would otherwise pick its EPS plugin, which runs Ghostscript
