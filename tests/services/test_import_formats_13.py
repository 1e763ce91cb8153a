"""Issue #13 items 4 and 5: Ultralytics `<name>.yaml`, Pascal VOC, and the source subset each
importer records (importer level: layouts built here, no database, no web, no downloads).

Item 4: any root YAML with `names` (list or dict); `train`/`val`/`test` as folders, lists or
`.txt` files of image paths, relative to `path:` or to the YAML; several YAMLs → refused naming
them unless one is chosen; Roboflow's `../train/images`. Item 5: VOC XML with `<filename>` that
points elsewhere, boxes past the edge, `difficult`, malformed and hostile XML, ImageSets subsets.
Every format records `subset_hint` (train / val / test; `valid` → val), including COCO per-split files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from appliance.importers import parse_source
from appliance.importers.formats import detect_format
from appliance.store.errors import InvalidDataset

W, H = 40, 20


def image(path: Path, size=(W, H)) -> Path:
    """A small image whose content differs per file name (the import skips identical content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = tuple(hashlib.sha256(path.as_posix().encode()).digest()[:3])
    Image.new("RGB", size, colour).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def yolo_pair(root: Path, image_rel: str, label_rel: str, text: str = "0 0.5 0.5 0.5 0.5\n") -> None:
    image(root / image_rel)
    write(root / label_rel, text)


def subsets(parsed) -> dict[str, str | None]:
    return {item.relpath: item.subset_hint for item in parsed.items}


def warned(parsed, file: str) -> list[str]:
    return [w.reason for w in parsed.warnings if w.file == file]


# ----------------------------------------------------------------- item 4: Ultralytics YAML


def ultralytics_coco8(root: Path) -> None:
    """coco8's layout: `coco8.yaml` with `path:`, folders for train/val and `names` as a dict."""
    yolo_pair(root, "images/train/a.jpg", "labels/train/a.txt", "0 0.5 0.5 0.5 0.5\n2 0.25 0.25 0.1 0.1\n")
    yolo_pair(root, "images/train/b.jpg", "labels/train/b.txt", "1 0.5 0.5 0.2 0.2\n")
    yolo_pair(root, "images/val/c.jpg", "labels/val/c.txt", "2 0.5 0.5 0.2 0.2\n")
    write(root / "coco8.yaml", (
        "# Ultralytics sample\npath: ../datasets/coco8 # dataset root dir\n"
        "train: images/train\nval: images/val\ntest: # optional\n\n"
        "names:\n  0: person\n  1: bicycle\n  2: car\n"
    ))


def test_ultralytics_yaml_named_after_the_dataset(tmp_path):
    ultralytics_coco8(tmp_path)
    assert detect_format(tmp_path)[0] == "yolo"
    parsed = parse_source(tmp_path, "auto", "detection")
    assert parsed.classes == ["person", "bicycle", "car"]
    assert subsets(parsed) == {"images/train/a.jpg": "train", "images/train/b.jpg": "train", "images/val/c.jpg": "val"}
    assert "coco8.yaml with 3 classes" in parsed.detected
    assert parsed.warnings == []  # `path: ../datasets/coco8` (the exporter's disk) falls back to the YAML's folder


def test_yaml_path_inside_the_dataset_is_the_base(tmp_path):
    """`path: data` makes `train: img/tr` mean `data/img/tr`; subsets come from the YAML, not folder names."""
    yolo_pair(tmp_path, "data/img/tr/a.jpg", "data/img/tr/a.txt")  # no images/ folder: labels beside
    yolo_pair(tmp_path, "data/img/other/b.jpg", "data/img/other/b.txt")
    write(tmp_path / "set.yaml", "path: data\ntrain: img/tr\nval: [img/other]\nnames: [cat]\n")
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert subsets(parsed) == {"data/img/tr/a.jpg": "train", "data/img/other/b.jpg": "val"}


def test_yaml_lists_and_txt_files_of_image_paths(tmp_path):
    for name in ("a", "b", "c", "d"):
        yolo_pair(tmp_path, f"images/all/{name}.jpg", f"labels/all/{name}.txt")
    write(tmp_path / "train.txt", "./images/all/a.jpg\nimages/all/b.jpg\n\n./images/all/missing.jpg\n")
    write(tmp_path / "lists" / "val.txt", "/home/someone/datasets/x/images/all/c.jpg\n")  # absolute: by bare name
    write(tmp_path / "mine.yaml", (
        "train: [train.txt]\nval: lists/val.txt\ntest: [images/all/d.jpg]\nnames: {0: cat}\n"
    ))
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert subsets(parsed) == {"images/all/a.jpg": "train", "images/all/b.jpg": "train",
                               "images/all/c.jpg": None, "images/all/d.jpg": "test"}
    # c.jpg is not beside lists/val.txt, in `path:` or beside the YAML: not found by bare name either
    assert warned(parsed, "lists/val.txt") == [
        "val: 1 listed image not found in the dataset (/home/someone/datasets/x/images/all/c.jpg); not assigned to val"
    ]
    assert warned(parsed, "train.txt") == [
        "train: 1 listed image not found in the dataset (./images/all/missing.jpg); not assigned to train"
    ]


def test_txt_list_absolute_paths_resolve_by_bare_name_beside_the_list(tmp_path):
    yolo_pair(tmp_path, "imgs/a.jpg", "imgs/a.txt")
    write(tmp_path / "imgs" / "val.txt", "C:\\Users\\me\\imgs\\a.jpg\n")
    write(tmp_path / "d.yaml", "val: imgs/val.txt\nnames: [cat]\n")
    assert subsets(parse_source(tmp_path, "yolo", "detection")) == {"imgs/a.jpg": "val"}


def test_image_in_two_subsets_keeps_the_first(tmp_path):
    """coco128.yaml uses the same folder for train and val."""
    yolo_pair(tmp_path, "images/train2017/a.jpg", "labels/train2017/a.txt")
    write(tmp_path / "coco128.yaml", "path: .\ntrain: images/train2017\nval: images/train2017\nnames: [cat]\n")
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert subsets(parsed) == {"images/train2017/a.jpg": "train"}
    assert warned(parsed, "coco128.yaml") == ["val: 1 image also listed under an earlier subset; kept there"]


def test_roboflow_layout_keeps_working(tmp_path):
    yolo_pair(tmp_path, "train/images/a.jpg", "train/labels/a.txt")
    yolo_pair(tmp_path, "valid/images/b.jpg", "valid/labels/b.txt")
    yolo_pair(tmp_path, "test/images/c.jpg", "test/labels/c.txt")
    write(tmp_path / "data.yaml", (
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: 2\nnames: ['cat', 'dog']\n"
        "roboflow:\n  workspace: w\n  project: p\n  version: 1\n"
    ))
    parsed = parse_source(tmp_path, "auto", "detection")
    assert parsed.classes == ["cat", "dog"]
    assert subsets(parsed) == {"train/images/a.jpg": "train", "valid/images/b.jpg": "val", "test/images/c.jpg": "test"}
    assert parsed.warnings == []


def test_several_yamls_are_refused_naming_them_until_one_is_chosen(tmp_path):
    yolo_pair(tmp_path, "images/a.jpg", "labels/a.txt", "1 0.5 0.5 0.5 0.5\n")
    write(tmp_path / "coco8.yaml", "names: {0: person, 1: car}\n")
    write(tmp_path / "coco8-grayscale.yml", "names: [cat, dog]\n")
    write(tmp_path / "hyp.yaml", "lr0: 0.01\n")  # no names: not a candidate
    with pytest.raises(InvalidDataset) as caught:
        parse_source(tmp_path, "auto", "detection")
    assert caught.value.message == (
        "yaml_file: several YAML files at the dataset root have class names (coco8-grayscale.yml, coco8.yaml); "
        "choose one with the yaml_file option (Class-list YAML on the import form)"
    )
    assert parse_source(tmp_path, "yolo", "detection", yaml_file="coco8.yaml").classes == ["person", "car"]
    chosen = parse_source(tmp_path, "auto", "detection", yaml_file="coco8-grayscale.yml")
    assert chosen.classes == ["cat", "dog"] and "coco8-grayscale.yml with 2 classes" in chosen.detected
    with pytest.raises(InvalidDataset) as caught:
        parse_source(tmp_path, "yolo", "detection", yaml_file="data.yaml")
    assert caught.value.message == (
        "yaml_file: no data.yaml at the dataset root (YAML files with class names there: coco8-grayscale.yml, coco8.yaml)"
    )
    with pytest.raises(InvalidDataset, match="'names' must be a list"):
        parse_source(tmp_path, "yolo", "detection", yaml_file="hyp.yaml")


@pytest.mark.parametrize("names", ["names: person\n", "names: 3\n", "names: [[a, b]]\n", "names: {x: cat}\n",
                                   "names: {0: {deep: 1}}\n", "names: []\n"])
def test_hostile_names_are_a_clear_import_error(tmp_path, names):
    yolo_pair(tmp_path, "images/a.jpg", "labels/a.txt")
    write(tmp_path / "coco8.yaml", names)
    with pytest.raises(InvalidDataset, match=r"^coco8.yaml: (names entry|'names' must be|'names' is empty)"):
        parse_source(tmp_path, "yolo", "detection")


def test_subset_entries_outside_the_dataset_are_ignored_with_a_warning(tmp_path):
    outside = tmp_path / "outside"
    image(outside / "secret.jpg")
    write(outside / "list.txt", "secret.jpg\n")
    root = tmp_path / "ds"
    yolo_pair(root, "images/a.jpg", "labels/a.txt")
    (root / "link").symlink_to(outside)
    write(root / "x.yaml", (
        f"path: {outside}\n"  # absolute, outside: not a base
        "train: ../nowhere\nval: [link, '../outside', 7, {a: b}]\ntest: /etc\nnames: [cat]\n"
    ))
    parsed = parse_source(root, "yolo", "detection")
    assert [i.relpath for i in parsed.items] == ["images/a.jpg"]  # the link's image is not imported either
    assert subsets(parsed) == {"images/a.jpg": None}
    reasons = warned(parsed, "x.yaml")
    assert "train: '../nowhere' is not a folder, an image or a .txt file in the dataset; ignored" in reasons
    assert "val: 'link' points outside the dataset; ignored" in reasons
    assert "val: '../outside' points outside the dataset; ignored" in reasons
    assert "val: a int is not a folder or a .txt file of image paths; ignored" in reasons
    assert "val: a dict is not a folder or a .txt file of image paths; ignored" in reasons
    assert "test: '/etc' points outside the dataset; ignored" in reasons
    assert not any(str(outside) in w.reason or str(tmp_path) in w.reason for w in parsed.warnings)


def test_alias_bomb_in_a_subset_entry_is_named_by_type(tmp_path):
    """A YAML 'billion laughs' of aliases: each entry is a huge list once expanded; never str()'d."""
    yolo_pair(tmp_path, "images/a.jpg", "labels/a.txt")
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    write(tmp_path / "bomb.yaml", "\n".join(levels) + "\ntrain: [*a8, images]\nnames: [cat]\n")
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert subsets(parsed) == {"images/a.jpg": "train"}
    assert warned(parsed, "bomb.yaml") == ["train: a list is not a folder or a .txt file of image paths; ignored"]


def test_txt_list_naming_files_outside_assigns_nothing(tmp_path, tmp_path_factory):
    outside = tmp_path_factory.mktemp("far")
    image(outside / "b.jpg")
    yolo_pair(tmp_path, "images/a.jpg", "labels/a.txt")
    write(tmp_path / "train.txt", f"../{outside.name}/b.jpg\n{outside}/b.jpg\n./images/a.jpg\n")
    write(tmp_path / "y.yaml", "train: train.txt\nnames: [cat]\n")
    parsed = parse_source(tmp_path, "yolo", "detection")
    assert subsets(parsed) == {"images/a.jpg": "train"}
    assert warned(parsed, "train.txt")[0].startswith("train: 2 listed images not found in the dataset")


def test_annotation_size_limit_covers_the_chosen_yaml_and_its_lists(tmp_path):
    yolo_pair(tmp_path, "images/a.jpg", "labels/a.txt")
    write(tmp_path / "train.txt", "./images/a.jpg\n" * 200)
    write(tmp_path / "y.yaml", "train: train.txt\nnames: [cat]\n")
    with pytest.raises(InvalidDataset, match="^train.txt: the annotation file holds 3000 bytes"):
        parse_source(tmp_path, "yolo", "detection", max_annotation_bytes=2000)


# ----------------------------------------------------------------- item 5: Pascal VOC


def voc_xml(filename: str, objects: list[tuple], size=(W, H), path: str | None = None) -> str:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult])"""
    parts = [f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>"]
    if path:
        parts.append(f"<path>{path}</path>")
    parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, x1, y1, x2, y2, *rest in objects:
        difficult = f"<difficult>{rest[0]}</difficult>" if rest else ""
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>{difficult}"
                     f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def voc_set(root: Path) -> None:
    """A VOC set as real ones are: renamed files, a box past the edge, difficult, a broken XML."""
    for stem in ("000001", "000002", "000003", "000004", "000005"):
        image(root / "JPEGImages" / f"{stem}.jpg")
    ann = root / "Annotations"
    write(ann / "000001.xml", voc_xml("000001.jpg", [("dog", 2, 3, 12, 13), ("person", 20, 1, 30, 9, 1)]))
    # <filename> and <path> name the file before it was renamed: matched by the XML's stem
    write(ann / "000002.xml", voc_xml("IMG_2231.JPG", [("cat", 1, 1, 10, 10)], path="C:\\Users\\ann\\IMG_2231.JPG"))
    write(ann / "000003.xml", voc_xml("000003.jpg", [("dog", 30, 5, 55, 19)]))  # past the right edge (40)
    write(ann / "000004.xml", "<annotation><filename>000004.jpg</filename><object><name>cat</name>")  # truncated
    write(ann / "000005.xml", voc_xml("000005.jpg", []))  # no object: a background image
    main = root / "ImageSets" / "Main"
    write(main / "train.txt", "000001\n000002\n")
    write(main / "val.txt", "000003\n000004\n")
    write(main / "test.txt", "000005\n")
    write(main / "trainval.txt", "000001\n000002\n000003\n000004\n")  # ignored: train.txt is there
    write(main / "dog_train.txt", "000001  1\n000002 -1\n")  # per-class lists: ignored


def test_voc_layout(tmp_path):
    voc_set(tmp_path)
    assert detect_format(tmp_path) == ("voc", ["Annotations/*.xml"])
    parsed = parse_source(tmp_path, "auto", "detection")
    assert parsed.format == "voc" and parsed.classes == ["cat", "dog", "person"]
    assert subsets(parsed) == {"JPEGImages/000001.jpg": "train", "JPEGImages/000002.jpg": "train",
                               "JPEGImages/000003.jpg": "val", "JPEGImages/000005.jpg": "test"}
    boxes = {i.relpath: [(b.x1, b.y1, b.x2, b.y2, b.label, b.difficult) for b in i.boxes] for i in parsed.items}
    assert boxes["JPEGImages/000001.jpg"] == [(2, 3, 12, 13, "dog", False), (20, 1, 30, 9, "person", True)]
    assert boxes["JPEGImages/000002.jpg"] == [(1, 1, 10, 10, "cat", False)]
    assert boxes["JPEGImages/000003.jpg"] == [(30, 5, 40, 19, "dog", False)]  # clipped to the image
    assert boxes["JPEGImages/000005.jpg"] == []
    assert warned(parsed, "JPEGImages/000003.jpg") == ["box clipped to the image (Annotations/000003.xml object 1)"]
    assert warned(parsed, "Annotations/000004.xml") == [
        "malformed XML (no element found, line 1 column 67); its image is skipped"
    ]
    assert "JPEGImages/000004.jpg" not in subsets(parsed)  # not imported as a background image
    assert parsed.detected == (
        "Auto-detected Pascal VOC: 5 XML files in Annotations/, 3 classes (cat, dog, person), subsets from "
        "ImageSets/Main/train.txt, ImageSets/Main/val.txt, ImageSets/Main/test.txt; 1 box marked difficult "
        "(kept; evaluation ignores them)"
    )


def test_voc_in_a_vocdevkit_folder_with_trainval_only(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    image(base / "JPEGImages" / "a.jpg")
    image(base / "JPEGImages" / "b.jpg")
    write(base / "Annotations" / "a.xml", voc_xml("a.jpg", [("cat", 1, 1, 9, 9)]))
    write(base / "Annotations" / "b.xml", voc_xml("b.jpg", [("cat", 1, 1, 9, 9)]))
    write(base / "ImageSets" / "Main" / "trainval.txt", "a\n")
    parsed = parse_source(tmp_path, "auto", "detection")
    assert subsets(parsed) == {"VOCdevkit/VOC2012/JPEGImages/a.jpg": "train", "VOCdevkit/VOC2012/JPEGImages/b.jpg": None}


def test_voc_beside_the_images_roboflow(tmp_path):
    """Roboflow's VOC export: XML beside each image in train/ valid/ test/, `<filename>` the original name."""
    for subset, stem in (("train", "a_jpg.rf.1"), ("valid", "b_jpg.rf.2"), ("test", "c_jpg.rf.3")):
        image(tmp_path / subset / f"{stem}.jpg")
        write(tmp_path / subset / f"{stem}.xml", voc_xml("original.jpg", [("cat", 1, 1, 9, 9)]))
    image(tmp_path / "train" / "orphan.jpg")
    parsed = parse_source(tmp_path, "auto", "detection")
    assert subsets(parsed) == {"train/a_jpg.rf.1.jpg": "train", "valid/b_jpg.rf.2.jpg": "val",
                               "test/c_jpg.rf.3.jpg": "test"}
    assert warned(parsed, "train/orphan.jpg") == ["no VOC annotation XML for this image; skipped"]


def test_voc_bad_objects_and_unmatched_xml(tmp_path):
    image(tmp_path / "JPEGImages" / "a.jpg")
    write(tmp_path / "Annotations" / "a.xml", (
        "<annotation><filename>a.jpg</filename>"
        "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name></name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>dog</name></object>"
        "<object><name>dog</name><bndbox><xmin>nan</xmin><ymin>1</ymin><xmax>x</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>5</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    ))
    write(tmp_path / "Annotations" / "nothing.xml", voc_xml("gone.jpg", [("cat", 1, 1, 9, 9)]))
    write(tmp_path / "Annotations" / "other.xml", "<svg xmlns='http://www.w3.org/2000/svg'/>")
    parsed = parse_source(tmp_path, "voc", "detection")
    assert [(b.label, b.x2) for b in parsed.items[0].boxes] == [("cat", 9)]
    assert warned(parsed, "Annotations/a.xml") == [
        "object 2: no <name>; box skipped", "object 3: no <bndbox>; box skipped",
        "object 4: bndbox ['nan', '1', 'x', '9'] is not four numbers; box skipped",
    ]
    assert warned(parsed, "JPEGImages/a.jpg") == ["zero-area box (Annotations/a.xml object 5); box skipped"]
    assert warned(parsed, "Annotations/nothing.xml") == ["no image found for it ('gone.jpg', nor one named nothing.*); skipped"]
    assert warned(parsed, "Annotations/other.xml") == [
        "not a VOC annotation (root element <{http://www.w3.org/2000/svg}svg>); its image is skipped"
    ]


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    "<annotation><filename>&lol3;</filename></annotation>"
)
EXTERNAL = (
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    "<annotation><filename>b.jpg</filename><object><name>&x;</name>"
    "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
)


def test_voc_hostile_xml_is_a_per_file_warning(tmp_path):
    for stem in ("a", "b", "c", "d"):
        image(tmp_path / "JPEGImages" / f"{stem}.jpg")
    write(tmp_path / "Annotations" / "a.xml", BILLION_LAUGHS)
    write(tmp_path / "Annotations" / "b.xml", EXTERNAL)
    (tmp_path / "Annotations" / "c.xml").write_bytes(b"\xff\xfe<\x00a\x00")  # not XML text
    write(tmp_path / "Annotations" / "d.xml", voc_xml("d.jpg", [("cat", 1, 1, 9, 9)]))
    parsed = parse_source(tmp_path, "voc", "detection")
    assert [i.relpath for i in parsed.items] == ["JPEGImages/d.jpg"] and parsed.classes == ["cat"]
    assert warned(parsed, "Annotations/a.xml") == ["XML with entities or a DTD, refused (EntitiesForbidden); its image is skipped"]
    assert warned(parsed, "Annotations/b.xml") == ["XML with entities or a DTD, refused (EntitiesForbidden); its image is skipped"]
    assert warned(parsed, "Annotations/c.xml")[0].startswith("malformed XML (")


def test_voc_with_nothing_usable_is_an_import_error(tmp_path):
    image(tmp_path / "JPEGImages" / "a.jpg")
    write(tmp_path / "Annotations" / "a.xml", "<annotation>")
    with pytest.raises(InvalidDataset, match=r"^Pascal VOC: .*no usable image .*Annotations/a.xml: malformed XML"):
        parse_source(tmp_path, "voc", "detection")
    with pytest.raises(InvalidDataset, match="that is a detection dataset, but this is a classification project"):
        parse_source(tmp_path, "voc", "classification")


def test_voc_annotation_size_limit(tmp_path):
    image(tmp_path / "JPEGImages" / "a.jpg")
    write(tmp_path / "Annotations" / "a.xml", voc_xml("a.jpg", [("cat", 1, 1, 9, 9)] * 20))
    with pytest.raises(InvalidDataset, match=r"^Annotations/a.xml: the annotation file holds \d+ bytes, over the limit"):
        parse_source(tmp_path, "voc", "detection", max_annotation_bytes=1000)


# ----------------------------------------------------------------- the source subset, every format


def coco_doc(files: list[str]) -> str:
    return json.dumps({
        "images": [{"id": i, "file_name": f, "width": W, "height": H} for i, f in enumerate(files)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(len(files))],
        "categories": [{"id": 1, "name": "cat"}],
    })


def test_coco_files_per_split_set_the_subset(tmp_path):
    for subset in ("train2017", "val2017", "test"):
        image(tmp_path / "images" / subset / f"{subset}.jpg")
        write(tmp_path / "annotations" / f"instances_{subset}.json", coco_doc([f"{subset}.jpg"]))
    parsed = parse_source(tmp_path, "auto", "detection")
    assert subsets(parsed) == {"images/train2017/train2017.jpg": "train", "images/val2017/val2017.jpg": "val",
                               "images/test/test.jpg": "test"}


def test_coco_roboflow_valid_folder_is_val(tmp_path):
    for subset in ("train", "valid"):
        image(tmp_path / subset / "x.jpg")
        write(tmp_path / subset / "_annotations.coco.json", coco_doc(["x.jpg"]))
    assert subsets(parse_source(tmp_path, "coco", "detection")) == {"train/x.jpg": "train", "valid/x.jpg": "val"}


def test_folder_subsets_use_the_same_values(tmp_path):
    image(tmp_path / "train" / "cat" / "a.jpg")
    image(tmp_path / "valid" / "cat" / "b.jpg")
    image(tmp_path / "test" / "dog" / "c.jpg")
    assert subsets(parse_source(tmp_path, "folder", "classification")) == {
        "train/cat/a.jpg": "train", "valid/cat/b.jpg": "val", "test/dog/c.jpg": "test"}
