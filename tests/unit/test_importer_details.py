"""Import parsing details that the format tests (tests/services/test_importers.py) leave open:
what each message names (file, line, entry, value), the detected sentence's counts, subset hints
and image-folder fallbacks, box clipping exactly at the image's edges, and the image helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from appliance.store.errors import InvalidDataset
from appliance.importers import make_thumbnail, parse_source, probe_image, store_image
from appliance.importers import voc, yolo
from appliance.importers.formats import detect_format
from appliance.importers.images import UnreadableImage
from appliance.importers.sources import find_file, is_ignored, preview, subdirs, subset_of
from tests.services.test_importers import (
    H,
    W,
    boxes_of,
    coco_doc,
    coco_standard,
    csv_classification,
    folder_flat,
    folder_nested,
    image,
    write,
    yolo_yaml_list,
)


def reasons(parsed, file: str) -> list[str]:
    return [w.reason for w in parsed.warnings if w.file == file]


def error(root: Path, fmt: str, task: str = "detection") -> str:
    with pytest.raises(InvalidDataset) as caught:
        parse_source(root, fmt, task)
    return caught.value.message


# --------------------------------------------------------------------------- arguments


def test_parse_source_arguments(tmp_path):
    from appliance.store.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as caught:
        parse_source(tmp_path, "xml", "detection")
    assert caught.value.message == "format must be auto, folder, csv, coco, yolo, voc (got 'xml')"
    with pytest.raises(ValidationFailed) as caught:
        parse_source(tmp_path, "auto", "segmentation")
    assert caught.value.message == "task must be classification or detection (got 'segmentation')"
    write(tmp_path / "notes.txt", "x")
    assert error(tmp_path / "notes.txt", "auto") == "notes.txt: not a folder"


# --------------------------------------------------------------------------- COCO


def coco(root: Path, doc: dict | str, name: str = "annotations.json") -> None:
    write(root / name, doc if isinstance(doc, str) else json.dumps(doc))


def doc_with(**overrides) -> dict:
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [],
           "categories": [{"id": 1, "name": "cat"}]}
    return {**doc, **overrides}


def test_coco_without_annotation_file_names_the_folder(tmp_path):
    root = tmp_path / "myset"
    image(root / "a.jpg")
    message = error(root, "coco")
    assert message.startswith("myset: no COCO annotation file") and "_annotations.coco.json" in message


def test_coco_detected_sentence_counts(tmp_path):
    coco_standard(tmp_path)
    detected = parse_source(tmp_path, "coco", "detection").detected
    assert "annotations/instances_default.json with 2 images and 2 categories in use (person, car)" in detected
    one = tmp_path / "one"
    image(one / "images" / "a.jpg")
    coco(one, coco_doc([(0, "a.jpg")], [(0, 0, [1, 1, 5, 5])], [(0, "cat")]))
    assert "with 1 image and 1 category in use (cat)" in parse_source(one, "coco", "detection").detected


def test_coco_roboflow_export_at_the_root_and_several_files(tmp_path):
    image(tmp_path / "a.jpg")
    coco(tmp_path, coco_doc([(0, "a.jpg")], [(0, 1, [1, 1, 5, 5])], [(1, "cat")]), "_annotations.coco.json")
    parsed = parse_source(tmp_path, "auto", "detection")
    assert (parsed.format, [i.relpath for i in parsed.items]) == ("coco", ["a.jpg"])
    image(tmp_path / "valid" / "b.jpg")
    coco(tmp_path / "valid", coco_doc([(0, "b.jpg")], [(0, 1, [1, 1, 5, 5])], [(1, "cat")]), "_annotations.coco.json")
    detected = parse_source(tmp_path, "coco", "detection").detected
    assert "_annotations.coco.json, valid/_annotations.coco.json with 2 images" in detected


@pytest.mark.parametrize("kind, entry, key", [
    ("category", {"name": "cat"}, "id"),
    ("category", {"id": 1}, "name"),
    ("image", {"file_name": "a.jpg"}, "id"),
    ("image", {"id": 1}, "file_name"),
])
def test_coco_entry_without_a_field_names_file_kind_and_key(tmp_path, kind, entry, key):
    image(tmp_path / "a.jpg")
    field = {"category": "categories", "image": "images"}[kind]
    coco(tmp_path, doc_with(**{field: [entry]}))
    message = error(tmp_path, "coco")
    assert message.startswith(f"annotations.json: {kind} entry without '{key}': ")
    assert message.endswith(str(entry))


def test_coco_entry_text_is_cut_at_80_characters(tmp_path):
    image(tmp_path / "a.jpg")
    entry = {"name": "x" * 200}
    coco(tmp_path, doc_with(categories=[entry]))
    message = error(tmp_path, "coco")
    assert message.endswith(": " + str(entry)[:80])


def test_coco_entry_that_is_not_an_object(tmp_path):
    image(tmp_path / "a.jpg")
    coco(tmp_path, doc_with(categories=["cat"]))
    assert error(tmp_path, "coco").startswith("annotations.json: category entry without 'id'")
    coco(tmp_path, doc_with(annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}, 5]))
    message = error(tmp_path, "coco")
    assert "annotations.json" in message and "annotation #1 is not an object" in message


def test_coco_annotation_problems_are_warnings_naming_the_annotation(tmp_path):
    image(tmp_path / "a.jpg")
    image(tmp_path / "b.jpg")
    image(tmp_path / "c.jpg")
    coco(tmp_path, doc_with(
        images=[{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "c.jpg"}],
        annotations=[
            {"image_id": 99, "category_id": 1, "bbox": [1, 1, 4, 4]},           # #0: no id, unknown image
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]},     # bad bbox
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": 7},            # not a list at all
            {"id": 13, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 6]},  # fine, after the bad ones
            {"id": 14, "image_id": 2, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 1},
            {"id": 15, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 1},
            {"id": 16, "image_id": 2, "category_id": 1, "bbox": [3, 3, 5, 5]},  # fine, after the crowd ones
            {"id": 17, "image_id": 3, "category_id": 1, "bbox": [1, 1, "x", 4]},  # c.jpg's only box: invalid
            {"id": 18, "image_id": 1, "category_id": 1, "bbox": [30, 5, 20, 5]},  # overshoots x by 10 px
        ],
    ))
    parsed = parse_source(tmp_path, "coco", "detection")
    assert boxes_of(parsed, "a.jpg") == [(2, 2, 8, 8, "cat"), (30, 5, 40, 10, "cat")]
    assert boxes_of(parsed, "b.jpg") == [(3, 3, 8, 8, "cat")]
    assert [i.relpath for i in parsed.items] == ["a.jpg", "b.jpg"]  # c.jpg: no valid box left
    warned = reasons(parsed, "annotations.json")
    assert "annotation #0: unknown image id 99; skipped" in warned
    assert "annotation 11: bbox [1, 2, 3] is not [x, y, width, height]; skipped" in warned
    assert "annotation 12: bbox 7 is not [x, y, width, height]; skipped" in warned
    assert "2 crowd annotations (iscrowd=1) skipped" in warned
    assert reasons(parsed, "c.jpg") == ["no valid box left; image skipped"]
    assert reasons(parsed, "a.jpg") == ["box clipped to the image (annotations.json annotation 18)"]


def test_coco_missing_image_does_not_stop_the_others(tmp_path):
    image(tmp_path / "b.jpg")
    coco(tmp_path, doc_with(images=[{"id": 1, "file_name": "gone.jpg"}, {"id": 2, "file_name": "b.jpg"}]))
    parsed = parse_source(tmp_path, "coco", "detection")
    assert [i.relpath for i in parsed.items] == ["b.jpg"]
    assert reasons(parsed, "annotations.json") == ["image 1: missing image file gone.jpg"]


def test_coco_not_utf8_and_not_coco(tmp_path):
    image(tmp_path / "a.jpg")
    (tmp_path / "annotations.json").write_bytes(b'{"images": "\xff"}')
    message = error(tmp_path, "coco")
    assert message.startswith("annotations.json: not UTF-8 text")
    coco(tmp_path, {"images": []})
    assert "needs images, annotations, categories lists" in error(tmp_path, "coco")


def test_coco_instances_file_gives_subset_and_image_folder(tmp_path):
    image(tmp_path / "images" / "train2017" / "a.jpg")
    image(tmp_path / "val2017" / "b.jpg")
    coco(tmp_path, coco_doc([(1, "a.jpg")], [(1, 1, [1, 1, 5, 5])], [(1, "cat")]), "annotations/instances_train2017.json")
    coco(tmp_path, coco_doc([(1, "b.jpg")], [(1, 1, [1, 1, 5, 5])], [(1, "cat")]), "annotations/instances_val2017.json")
    parsed = parse_source(tmp_path, "coco", "detection")
    assert {i.relpath: i.subset_hint for i in parsed.items} == {"images/train2017/a.jpg": "train", "val2017/b.jpg": "val"}


def test_coco_subset_folder_images_and_root_images(tmp_path):
    image(tmp_path / "valid" / "images" / "a.jpg")  # beside the JSON, in images/
    image(tmp_path / "images" / "b.jpg")  # in the root's images/
    doc = coco_doc([(1, "a.jpg"), (2, "b.jpg")], [(1, 1, [1, 1, 5, 5]), (2, 1, [1, 1, 5, 5])], [(1, "cat")])
    coco(tmp_path / "valid", doc, "_annotations.coco.json")
    parsed = parse_source(tmp_path, "coco", "detection")
    assert {i.relpath: i.subset_hint for i in parsed.items} == {"valid/images/a.jpg": "val", "images/b.jpg": "val"}


def test_coco_at_the_root_of_a_folder_called_train_has_no_subset(tmp_path):
    root = tmp_path / "train"
    image(root / "images" / "a.jpg")
    coco(root, coco_doc([(1, "a.jpg")], [(1, 1, [1, 1, 5, 5])], [(1, "cat")]))
    assert [i.subset_hint for i in parse_source(root, "coco", "detection").items] == [None]


# --------------------------------------------------------------------------- CSV


def test_csv_messages_name_files_and_layouts(tmp_path):
    root = tmp_path / "myset"
    image(root / "a.jpg")
    assert error(root, "csv", "classification").startswith("myset: no CSV file")
    write(root / "labels.csv", "a.jpg,cat\n")
    write(root / "more.csv", "a.jpg,cat\n")
    assert error(root, "csv", "classification").endswith("or name them train.csv, val.csv, test.csv")
    (root / "more.csv").unlink()
    write(root / "labels.csv", "   \n\n")
    assert error(root, "csv", "classification") == "labels.csv: the CSV file is empty"
    write(root / "labels.csv", "filename,label\na.jpg,cat\nb.jpg,dog,x\n")
    assert "labels.csv line 3: expected 2 columns (as in the header on line 1), got 3" in error(root, "csv")
    write(root / "labels.csv", "a.jpg,1,2,3,4,cat\nb.jpg,1\n")
    assert "expected 6 columns (filename,xmin,ymin,xmax,ymax,label), got 2" in error(root, "csv")
    write(root / "labels.csv", "a.jpg,cat\nb.jpg\n")
    assert "expected 2 columns (filename,label), got 1" in error(root, "csv", "classification")
    write(root / "labels.csv", "filename,xmin,ymin,label\na.jpg,1,2,cat\n")
    assert "the header has xmin, ymin but needs all" in error(root, "csv")
    (root / "labels.csv").write_bytes(b"a.jpg,c\xffat\n")
    assert error(root, "csv").startswith("labels.csv: not UTF-8 text")


def test_csv_mixed_tasks(tmp_path):
    image(tmp_path / "a.jpg")
    write(tmp_path / "train.csv", "a.jpg,cat\n")
    write(tmp_path / "val.csv", "a.jpg,1,1,5,5,cat\n")
    message = error(tmp_path, "csv")
    assert message.startswith("train.csv, val.csv: mix filename,label and filename,xmin,ymin,xmax,ymax,label")


def test_csv_detected_sentences(tmp_path):
    csv_classification(tmp_path)
    detected = parse_source(tmp_path, "csv", "classification").detected
    assert "labels.csv with 2 rows of filename,label (classification, 2 classes: cat, dog)" in detected
    image(tmp_path / "d" / "a.jpg")
    write(tmp_path / "d" / "train.csv", "a.jpg,1,1,5,5,cat\n")
    write(tmp_path / "d" / "val.csv", "a.jpg,2,2,6,6,cat\n")
    detected = parse_source(tmp_path / "d", "csv", "detection").detected
    assert "train.csv, val.csv with 2 rows of filename,xmin,ymin,xmax,ymax,label (detection, 1 class: cat)" in detected


def test_csv_header_needs_a_label_column(tmp_path):
    image(tmp_path / "a.jpg")
    write(tmp_path / "labels.csv", "filename,tag\na.jpg,cat\n")  # not a header: a row naming a missing file
    parsed = parse_source(tmp_path, "csv", "classification")
    assert {i.relpath: i.label for i in parsed.items} == {"a.jpg": "cat"}
    assert reasons(parsed, "labels.csv") == ["line 1: missing image file filename"]


def test_csv_with_a_byte_order_mark(tmp_path):
    image(tmp_path / "a.jpg")
    (tmp_path / "labels.csv").write_bytes("\ufefffilename,label\na.jpg,cat\n".encode())
    parsed = parse_source(tmp_path, "csv", "classification")
    assert ({i.relpath: i.label for i in parsed.items}, parsed.warnings) == ({"a.jpg": "cat"}, [])


def test_csv_in_a_folder_called_val_has_no_subset_unless_named(tmp_path):
    root = tmp_path / "val"
    image(root / "a.jpg")
    write(root / "labels.csv", "a.jpg,cat\n")
    assert [i.subset_hint for i in parse_source(root, "csv", "classification").items] == [None]


def test_csv_box_warnings_name_the_line(tmp_path):
    image(tmp_path / "a.jpg")
    write(tmp_path / "boxes.csv", "a.jpg,1,1,5,5,cat\na.jpg,30,5,45,10,cat\n")
    parsed = parse_source(tmp_path, "csv", "detection")
    assert reasons(parsed, "a.jpg") == ["box clipped to the image (boxes.csv line 2)"]


# --------------------------------------------------------------------------- box fitting at the edges


@pytest.mark.parametrize("box, kept, reason", [
    ((5, 5, 15, 5), None, "zero-area box"),
    ((5, 5, 5, 15), None, "zero-area box"),
    ((-10, 5, 0, 15), None, "box outside the image"),
    ((5, -10, 15, 0), None, "box outside the image"),
    ((-10, 5, 1, 15), (0, 5, 1, 15), "box clipped to the image"),
    ((5, -10, 15, 1), (5, 0, 15, 1), "box clipped to the image"),
    ((-10, 5, 0, 30), None, "box outside the image"),   # left of the image, whatever y
    ((5, -10, 30, 0), None, "box outside the image"),   # above the image, whatever x
    ((W, 5, W + 5, 15), None, "box outside the image"),
    ((5, H, 15, H + 5), None, "box outside the image"),
    ((W - 1, 5, W + 5, 15), (W - 1, 5, W, 15), "box clipped to the image"),
    ((-3, 5, 15, 15), (0, 5, 15, 15), "box clipped to the image"),
    ((5, -3, 15, 15), (5, 0, 15, 15), "box clipped to the image"),
    ((5, 5, 15, H + 3), (5, 5, 15, H), "box clipped to the image"),
    ((5, 5, W + 1, 15), (5, 5, W, 15), None),  # exactly the 1 px tolerance: silent
    ((-1, -1, 15, 15), (0, 0, 15, 15), None),
])
def test_box_fitting(tmp_path, box, kept, reason):
    image(tmp_path / "a.jpg")
    image(tmp_path / "b.jpg")
    write(tmp_path / "boxes.csv", "b.jpg,1,1,5,5,cat\na.jpg," + ",".join(map(str, box)) + ",cat\n")
    parsed = parse_source(tmp_path, "csv", "detection")
    if kept is None:
        assert "a.jpg" not in [i.relpath for i in parsed.items]
        assert reasons(parsed, "a.jpg") == [f"{reason} (boxes.csv line 2); box skipped", "no valid box left; image skipped"]
    else:
        assert boxes_of(parsed, "a.jpg") == [(*kept, "cat")]
        assert reasons(parsed, "a.jpg") == ([f"{reason} (boxes.csv line 2)"] if reason else [])


# --------------------------------------------------------------------------- validation of items


def test_no_usable_image_quotes_the_first_problem(tmp_path):
    write(tmp_path / "cat" / "a.jpg", "garbage")
    image(tmp_path / "cat" / "b.jpg")
    (tmp_path / "cat" / "b.jpg").write_bytes((tmp_path / "cat" / "b.jpg").read_bytes()[:40])
    image(tmp_path / "stray.jpg")
    message = error(tmp_path, "folder", "classification")
    assert "no usable image (3 problems, first: stray.jpg: not inside a class folder; skipped)" in message
    coco(tmp_path / "empty", doc_with(images=[]))
    assert error(tmp_path / "empty", "coco").endswith("no usable image (none found)")


def test_an_image_listed_twice_is_kept_once(tmp_path):
    image(tmp_path / "a.jpg")
    write(tmp_path / "train.csv", "a.jpg,cat\n")
    write(tmp_path / "val.csv", "a.jpg,dog\n")
    parsed = parse_source(tmp_path, "csv", "classification")
    assert [(i.relpath, i.label, i.subset_hint) for i in parsed.items] == [("a.jpg", "cat", "train")]
    assert reasons(parsed, "a.jpg") == ["listed more than once; kept the first"]


def test_a_link_out_of_the_dataset_is_skipped(tmp_path):
    image(tmp_path / "outside.jpg")
    folder_flat(tmp_path / "ds")
    os.symlink(tmp_path / "outside.jpg", tmp_path / "ds" / "cat" / "link.jpg")
    parsed = parse_source(tmp_path / "ds", "folder", "classification")
    assert "cat/link.jpg" not in [i.relpath for i in parsed.items]
    assert reasons(parsed, "cat/link.jpg") == ["a link to outside the dataset folder; skipped"]


def test_unreadable_image_warning_carries_the_reason(tmp_path):
    folder_flat(tmp_path)
    write(tmp_path / "cat" / "bad.jpg", "not an image")
    (warning,) = reasons(parse_source(tmp_path, "folder", "classification"), "cat/bad.jpg")
    assert warning.startswith("unreadable image (cannot identify image file") and warning.endswith("); skipped")


def test_ambiguous_layout_lists_the_evidence(tmp_path):
    yolo_yaml_list(tmp_path)
    for sub in ("train", "valid", "test"):
        (tmp_path / sub / "labels").mkdir(parents=True)
    write(tmp_path / "labels.csv", "images/a.jpg,cat\n")
    message = error(tmp_path, "auto")
    assert "(yolo: data.yaml, labels/, test/labels/, … 2 more; csv: labels.csv)" in message


def test_nothing_recognised_lists_every_layout(tmp_path):
    write(tmp_path / "notes.txt", "hello")
    message = error(tmp_path, "auto")
    assert f"{yolo.LOOKED_FOR}; {voc.LOOKED_FOR}; a *.csv file" in message and "; one sub-folder of images per class" in message


# --------------------------------------------------------------------------- YOLO


def test_yolo_label_folders_one_level_down_are_evidence(tmp_path):
    image(tmp_path / "train" / "images" / "a.jpg")
    write(tmp_path / "train" / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    write(tmp_path / "classes.txt", "cat\n")
    assert detect_format(tmp_path) == ("yolo", ["train/labels/"])


def test_yolo_missing_label_file_does_not_stop_the_others(tmp_path):
    yolo_yaml_list(tmp_path)
    image(tmp_path / "images" / "0first.jpg")
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert [i.relpath for i in parsed.items] == ["images/a.jpg"]


def test_yolo_detected_lists_up_to_four_folders(tmp_path):
    write(tmp_path / "classes.txt", "cat\n")
    for k in range(4):
        image(tmp_path / f"f{k}" / "a.jpg")
        write(tmp_path / f"f{k}" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    assert parse_source(tmp_path, "yolo", "detection").detected == (
        "YOLO layout: classes.txt with 1 class, f0/ + f1/ + f2/ + f3/"
    )
    image(tmp_path / "f4" / "a.jpg")
    write(tmp_path / "f4" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    assert parse_source(tmp_path, "yolo", "detection").detected.endswith("1 class, f0/, f1/, f2/, f3/, … 1 more")


def test_yolo_without_any_labelled_image(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    write(tmp_path / "classes.txt", "cat\n")
    assert "YOLO layout: classes.txt with 1 class, no labelled image" in error(tmp_path, "yolo")


@pytest.mark.parametrize("names_file, text, message", [
    ("obj.names", "\n\n", "obj.names: no class names"),
    ("classes.txt", "cat\n\ndog\n", "classes.txt line 2: empty class name"),
    ("data.yaml", "- a\n- b\n", "data.yaml: 'names' must be a list"),
    ("data.yaml", "names: []\n", "data.yaml: 'names' is empty"),
    ("data.yaml", "names: {a: cat}\n", "data.yaml: names entry 'a': 'cat' is not an id and a name"),
    ("data.yaml", "names: {0: [x, y]}\n", "data.yaml: names entry 0: \"['x', 'y']\" is not an id and a name"),
    ("data.yaml", "names: {0: '  '}\n", "data.yaml: names entry 0: '  ' is not an id and a name"),
    ("data.yaml", "nc: 2\nnames: {0: cat\n  1: dog]\npath: x\n", "data.yaml line 3: invalid YAML (expected ',' or '}'"),
])
def test_yolo_class_name_errors(tmp_path, names_file, text, message):
    image(tmp_path / "images" / "a.jpg")
    write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    write(tmp_path / names_file, text)
    assert message in error(tmp_path, "yolo")


def test_yolo_names_entry_text_is_cut_at_40_characters(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    write(tmp_path / "data.yaml", "names: {0: [" + ", ".join(["abcdefghij"] * 10) + "]}\n")
    value = str(["abcdefghij"] * 10)
    assert f"names entry 0: {value[:40]!r} is not" in error(tmp_path, "yolo")


def test_yolo_label_lines(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    write(tmp_path / "data.yaml", "names: [cat, dog]\n")
    write(tmp_path / "labels" / "a.txt", "\n0 0.5 0.5 0.5 0.5\n1.0 0.1 0.1 0.2 0.1 0.2 0.3 0.1 0.3\n")
    assert boxes_of(parse_source(tmp_path, "yolo", "detection"), "images/a.jpg") == [
        (10, 5, 30, 15, "cat"), (4, 2, 8, 6, "dog"),  # polygon of 4 points: its bounding box
    ]


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5", "labels/a.txt line 1: 3 values; expected 5 (class cx cy w h) or a polygon"),
    ("1.5 0.5 0.5 0.2 0.2", "labels/a.txt line 1: expected 'class cx cy w h' numbers, got '1.5 0.5 0.5 0.2 0.2'"),
    ("-1 0.5 0.5 0.2 0.2", "got '-1 0.5 0.5 0.2 0.2'"),
    ("0 x " + "9" * 100, "got '0 x " + "9" * 76 + "'"),
])
def test_yolo_bad_lines(tmp_path, line, message):
    image(tmp_path / "images" / "a.jpg")
    write(tmp_path / "data.yaml", "names: [cat]\n")
    write(tmp_path / "labels" / "a.txt", line + "\n")
    assert message in error(tmp_path, "yolo")


def test_yolo_text_files_with_bom_and_bad_bytes(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "classes.txt").write_bytes("\ufeffcat\n".encode())
    assert parse_source(tmp_path, "yolo", "detection").classes == ["cat"]
    (tmp_path / "labels" / "a.txt").write_bytes(b"0 0.5 0.5 0.5 0.5\xff\n")
    assert error(tmp_path, "yolo").startswith("labels/a.txt: not UTF-8 text (invalid start byte at byte 17)")


# --------------------------------------------------------------------------- folder layout


def test_folder_detected_sentences(tmp_path):
    folder_flat(tmp_path / "flat")
    assert parse_source(tmp_path / "flat", "folder", "classification").detected == (
        "Folder layout: 2 class folders (cat, dog)"
    )
    folder_nested(tmp_path / "nested")
    detected = parse_source(tmp_path / "nested", "folder", "classification").detected
    assert detected == "Folder layout: 2 class folders in test/ + train/ + valid/ (cat, dog)"


def test_folder_images_deeper_in_a_class_folder_belong_to_it(tmp_path):
    image(tmp_path / "cat" / "close" / "a.jpg")
    image(tmp_path / "dog" / "b.jpg")
    write(tmp_path / "README.txt", "not an image: no warning")
    parsed = parse_source(tmp_path, "folder", "classification")
    assert {i.relpath: i.label for i in parsed.items} == {"cat/close/a.jpg": "cat", "dog/b.jpg": "dog"}
    assert parsed.warnings == []


def test_folder_errors_and_strays(tmp_path):
    root = tmp_path / "myset"
    (root / "empty").mkdir(parents=True)
    assert error(root, "folder", "classification").startswith("myset: no class folders with images")
    folder_flat(root)
    image(root / "stray.jpg")
    assert reasons(parse_source(root, "folder", "classification"), "stray.jpg") == ["not inside a class folder; skipped"]


# --------------------------------------------------------------------------- sources helpers


def test_subset_of():
    assert [subset_of(n) for n in ("train2017", "Valid", "test-1", "val_", "2017train", "trains")] == [
        "train", "val", "test", "val", None, None,
    ]


def test_is_ignored_and_subdirs(tmp_path):
    assert is_ignored(".DS_Store") and is_ignored("__MACOSX") and is_ignored(".git")
    assert not is_ignored("cat") and not is_ignored("MACOSX")
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert subdirs(tmp_path) == [tmp_path / "a", tmp_path / "b"]


def test_find_file_never_leaves_its_bases(tmp_path):
    base = tmp_path / "base"
    (base / "sub").mkdir(parents=True)
    (base / "x.jpg").write_text("x")
    (tmp_path / "y.jpg").write_text("y")
    assert find_file("sub/x.jpg", [base]) == base / "x.jpg"  # not in sub/: found by bare name
    assert find_file("../y.jpg", [base]) is None
    (base / "data").mkdir()
    (base / "data" / "z.jpg").write_text("z")
    assert find_file("/data/z.jpg", [base]) is None  # absolute: bare name only
    (base / "C:" / "data").mkdir(parents=True)
    (base / "C:" / "data" / "w.jpg").write_text("w")
    assert find_file("C:/data/w.jpg", [base]) is None
    (base / "c:" / "data").mkdir(parents=True)
    (base / "c:" / "data" / "w.jpg").write_text("w")
    assert find_file("c:/data/w.jpg", [base]) is None
    assert find_file("data/z.jpg", [base]) == base / "data" / "z.jpg"


def test_preview():
    assert preview(list("abcde")) == "a, b, c, d, e"
    assert preview(list("abcdef")) == "a, b, c, d, e, … 1 more"
    assert preview(list("abcdefgh"), 3) == "a, b, c, … 5 more"


# --------------------------------------------------------------------------- images


def exif_image(path: Path, orientation: int, mode: str = "RGB", fmt: str = "JPEG", size=(40, 20)) -> Path:
    im = Image.new(mode, size, 0 if mode in ("L", "CMYK") else (200, 40, 40))
    if mode == "RGB":
        im.paste((0, 255, 0), (0, 0, 4, 4))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, format=fmt, exif=exif)
    return path


def test_store_with_probed_info_copies_and_move_renames(tmp_path):
    src = image(tmp_path / "a.jpg")
    info = probe_image(src)
    assert store_image(src, tmp_path / "copy.jpg", info) == info
    assert (tmp_path / "copy.jpg").read_bytes() == src.read_bytes() and src.exists()
    assert store_image(src, tmp_path / "moved.jpg", move=True).sha256 == info.sha256
    assert not src.exists() and (tmp_path / "moved.jpg").read_bytes() == (tmp_path / "copy.jpg").read_bytes()


def test_mirrored_orientation_needs_transpose_and_invalid_ones_do_not(tmp_path):
    info = probe_image(exif_image(tmp_path / "m.png", 2, fmt="PNG"))
    assert (info.needs_transpose, info.width, info.height) == (True, 40, 20)
    stored = store_image(tmp_path / "m.png", tmp_path / "out" / "m.png", info)
    assert stored == info
    with Image.open(tmp_path / "out" / "m.png") as im:
        assert (im.getpixel((39, 0)), im.getpixel((0, 0))) == ((0, 255, 0), (200, 40, 40))  # mirrored
    assert probe_image(exif_image(tmp_path / "bad.jpg", 9)).needs_transpose is False


@pytest.mark.parametrize("mode, fmt, stored", [("L", "JPEG", "L"), ("CMYK", "JPEG", "RGB"), ("RGB", "PNG", "RGB"), ("RGBA", "PNG", "RGBA")])
def test_rotated_image_keeps_its_format_and_mode(tmp_path, mode, fmt, stored):
    src = exif_image(tmp_path / f"a.{fmt.lower()}", 6, mode=mode, fmt=fmt)
    info = store_image(src, tmp_path / "out" / src.name)
    assert (info.width, info.height, info.needs_transpose) == (20, 40, True)
    with Image.open(tmp_path / "out" / src.name) as im:
        assert (im.format, im.mode, im.size) == (fmt, stored, (20, 40))  # CMYK is stored as RGB


def test_thumbnail_of_rgba_and_of_refused_decoders(tmp_path):
    Image.new("RGBA", (300, 100), (1, 2, 3, 128)).save(tmp_path / "a.png")
    make_thumbnail(tmp_path / "a.png", tmp_path / "t.jpg", size=64)
    with Image.open(tmp_path / "t.jpg") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 21))
    Image.new("RGB", (10, 10)).save(tmp_path / "p.jpg", format="PPM")  # a decoder outside the allowed list
    with pytest.raises(UnreadableImage) as caught:
        make_thumbnail(tmp_path / "p.jpg", tmp_path / "t2.jpg")
    assert caught.value.message.startswith("p.jpg: unreadable image (") and caught.value.reason
    with pytest.raises(UnreadableImage) as caught:
        probe_image(tmp_path / "p.jpg")
    assert "cannot identify image file" in caught.value.reason


def quantization(path_or_buffer) -> dict:
    with Image.open(path_or_buffer) as im:
        return im.quantization


def reference_quantization(quality: int) -> dict:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return quantization(buffer)


def test_rotated_jpeg_is_re_encoded_at_quality_95_and_thumbnails_at_85(tmp_path):
    src = exif_image(tmp_path / "a.jpg", 6)
    store_image(src, tmp_path / "out" / "a.jpg")
    assert quantization(tmp_path / "out" / "a.jpg") == reference_quantization(95)
    make_thumbnail(src, tmp_path / "t.jpg")
    assert quantization(tmp_path / "t.jpg") == reference_quantization(85)


def test_thumbnail_failure_reason(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "p.jpg", format="PPM")
    with pytest.raises(UnreadableImage) as caught:
        make_thumbnail(tmp_path / "p.jpg", tmp_path / "t.jpg")
    assert "cannot identify image file" in caught.value.reason


@pytest.mark.parametrize("names_file", ["data.yaml", "classes.txt"])
def test_class_name_files_that_are_not_utf8(tmp_path, names_file):
    image(tmp_path / "images" / "a.jpg")
    write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    (tmp_path / names_file).write_bytes(b"names: [c\xffat]\n")
    assert error(tmp_path, "yolo").startswith(f"{names_file}: not UTF-8 text")


def test_yaml_error_without_a_position(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    write(tmp_path / "data.yaml", "names: [cat]\x07\n")  # the reader refuses it before parsing
    message = error(tmp_path, "yolo")
    assert message.startswith("data.yaml: invalid YAML (") and "#x0007" in message


def test_csv_syntax_error_names_file_and_line(tmp_path):
    image(tmp_path / "a.jpg")
    write(tmp_path / "labels.csv", "a.jpg,cat\n" + "b" * 200_000 + ",dog\n")
    message = error(tmp_path, "csv", "classification")
    assert message.startswith("labels.csv line 2: ") and "field larger than field limit" in message


def test_a_file_that_cannot_be_read_is_a_warning(tmp_path):
    from appliance.importers.formats import _validate
    from appliance.importers.sources import RawDataset, RawItem

    image(tmp_path / "a.jpg")
    (tmp_path / "dir.jpg").mkdir()
    raw = RawDataset("folder", "classification", ["cat"],
                     [RawItem(tmp_path / "dir.jpg", label="cat"), RawItem(tmp_path / "a.jpg", label="cat")], [], "x")
    parsed = _validate(tmp_path, raw, None)
    assert [i.relpath for i in parsed.items] == ["a.jpg"]
    assert reasons(parsed, "dir.jpg") == ["cannot read the file (Is a directory); skipped"]
