"""COCO instances JSON + images (detection). `bbox` is `[x, y, width, height]` in pixels.

Annotation files looked for, as the common tools export them:
  - `annotations/instances_*.json` (COCO itself, CVAT, Datumaro; images in `images/`,
    `images/<subset>/` or `<subset>/`),
  - `_annotations.coco.json` at the root or in each subset folder (Roboflow; images beside it),
  - `annotations.json` and Label Studio's `result.json` at the root (images in `images/`).
`file_name` may hold sub-folders, Windows separators or the annotator's absolute path: it is
tried as written and then by bare name, next to the JSON, in `images/` and at the root.

Categories become classes only when at least one annotation uses them, so Roboflow's
dataset-level super-category (id 0, never annotated) does not become a class; ids need not be
contiguous and are matched per file, classes by name. Crowd annotations (`iscrowd: 1`) mark
regions, not objects, and are skipped (one warning per file). Images with no annotation are
kept as background images.
"""

from __future__ import annotations

import json
from pathlib import Path

from appliance.store.errors import InvalidDataset
from appliance.importers.parsed import ImportWarning
from appliance.importers.sources import (
    RawBox,
    RawDataset,
    RawItem,
    count,
    find_file,
    number,
    preview,
    rel,
    subdirs,
    subset_of,
)

LOOKED_FOR = (
    "COCO JSON: annotations/instances_*.json, _annotations.coco.json (also in train/ valid/ test/), "
    "annotations.json, result.json"
)


def find(root: Path) -> list[str]:
    return [rel(p, root) for p in _json_files(root)]


def read(root: Path) -> RawDataset:
    files = _json_files(root)
    if not files:
        raise InvalidDataset(f"{root.name}: no COCO annotation file (looked for {LOOKED_FOR})")
    items: list[RawItem] = []
    warnings: list[ImportWarning] = []
    declared: dict[str, None] = {}  # category names in file order (a dict keeps it unique)
    for path in files:
        names = _read_file(path, root, items, warnings)
        declared.update(dict.fromkeys(names))
    used = {box.label for item in items for box in item.boxes}
    classes = [name for name in declared if name in used]
    detected = (
        f"COCO: {', '.join(rel(p, root) for p in files)} with {count(len(items), 'image')} and "
        f"{count(len(classes), 'category', 'categories')} in use ({preview(classes)})"
    )
    return RawDataset("coco", "detection", classes, items, warnings, detected)


def _json_files(root: Path) -> list[Path]:
    found = sorted((root / "annotations").glob("instances_*.json"))
    found += [root / "_annotations.coco.json", root / "annotations.json", root / "result.json"]
    found += [d / "_annotations.coco.json" for d in subdirs(root)]
    return [p for p in found if p.is_file()]


def _read_file(path: Path, root: Path, items: list[RawItem], warnings: list[ImportWarning]) -> list[str]:
    """Append this file's images to `items`; return its category names."""
    name = rel(path, root)
    doc = _load(path, name)
    categories = {
        _id(c, name, "category"): str(_field(c, "name", name, "category")).strip() for c in doc["categories"]
    }
    images = {_id(i, name, "image"): i for i in doc["images"]}
    items_by_id = {image_id: RawItem(Path()) for image_id in images}  # source filled in below
    crowd = 0
    for index, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            raise InvalidDataset(f"{name}: annotation #{index} is not an object")
        ann_id = ann.get("id", f"#{index}")
        item = _lookup(items_by_id, ann.get("image_id"))
        if ann.get("iscrowd") and item is not None:
            crowd += 1
            item.dropped += 1
            continue
        problem = None
        if item is None:
            problem = f"unknown image id {ann.get('image_id')!r}"
        elif _lookup(categories, ann.get("category_id")) is None:
            problem = f"unknown category id {ann.get('category_id')!r}"
        elif (xywh := _bbox(ann.get("bbox"))) is None:
            problem = f"bbox {ann.get('bbox')!r} is not [x, y, width, height]"
        if problem:
            warnings.append(ImportWarning(name, f"annotation {ann_id}: {problem}; skipped"))
            if item is not None:
                item.dropped += 1
            continue
        x, y, w, h = xywh
        label = categories[ann["category_id"]]
        item.boxes.append(RawBox(x, y, x + w, y + h, label, f"{name} annotation {ann_id}"))
    if crowd:
        warnings.append(ImportWarning(name, f"{count(crowd, 'crowd annotation')} (iscrowd=1) skipped"))

    hint, bases = _subset_and_bases(path, root)
    for image_id, image in images.items():
        source = find_file(str(_field(image, "file_name", name, "image")), bases)
        if source is None:
            warnings.append(ImportWarning(name, f"image {image_id}: missing image file {image['file_name']}"))
            continue
        item = items_by_id[image_id]
        item.source, item.subset_hint = source, hint
        items.append(item)
    return list(categories.values())


def _load(path: Path, name: str) -> dict:
    try:
        doc = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise InvalidDataset(f"{name} {where}: invalid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise InvalidDataset(f"{name}: not UTF-8 text ({exc.reason})") from exc
    except ValueError as exc:  # Python refuses integers of more than 4300 digits
        raise InvalidDataset(f"{name}: invalid JSON (a number with too many digits)") from exc
    except RecursionError as exc:
        raise InvalidDataset(f"{name}: invalid JSON (nested too deeply)") from exc
    keys = ("images", "annotations", "categories")
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in keys):
        raise InvalidDataset(f"{name}: not a COCO instances file (needs {', '.join(keys)} lists)")
    return doc


def _field(entry: object, key: str, name: str, kind: str) -> object:
    if not isinstance(entry, dict) or entry.get(key) is None:
        raise InvalidDataset(f"{name}: {kind} entry without '{key}': {str(entry)[:80]}")
    return entry[key]


def _id(entry: object, name: str, kind: str) -> int | float | str:
    """An image's or category's id: a number or a string (anything else can't be matched)."""
    value = _field(entry, "id", name, kind)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidDataset(f"{name}: {kind} entry with 'id' {str(value)[:40]}: not a number or a string")
    return value


def _lookup(mapping: dict, key: object):
    """`mapping.get(key)`, None for a key JSON can't use as an id (a list or an object)."""
    try:
        return mapping.get(key)
    except TypeError:
        return None


def _bbox(value: object) -> tuple[float, float, float, float] | None:
    if not isinstance(value, list) or len(value) != 4:
        return None
    try:
        x, y, w, h = (number(v) for v in value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too large for a float
        return None
    return x, y, w, h


def _subset_and_bases(path: Path, root: Path) -> tuple[str | None, list[Path]]:
    """Subset hint and the folders where this file's images may live."""
    folder = path.parent
    if path.name.startswith("instances_"):  # annotations/instances_train2017.json
        subset_name = path.stem.removeprefix("instances_")
        bases = [root / "images" / subset_name, root / subset_name, root / "images", root]
        return subset_of(subset_name), bases
    hint = subset_of(folder.name) if folder != root else None
    return hint, list(dict.fromkeys([folder, folder / "images", root / "images", root]))


def annotation_files(root: Path) -> list[Path]:
    """The files `read` loads whole (held to the annotation size limit before reading)."""
    return _json_files(root)
