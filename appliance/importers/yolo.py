"""YOLO labels (detection): one `*.txt` per image, a line `class cx cy w h` per box, in
fractions of the image's width and height.

A label file's path is the image's with its last `images` folder replaced by `labels` and the
extension by `.txt` (ultralytics' rule), or beside the image when there is no `images` folder
(CVAT "YOLO 1.1"). That covers `images/` + `labels/`, ultralytics' `images/train` +
`labels/train`, and Roboflow's `train/images` + `train/labels`; a `train` / `val` / `valid` /
`test` folder on the way sets the subset hint.

Class names come from a YAML file at the root that has `names` (a list or an `{id: name}`
mapping): Roboflow's `data.yaml`, or Ultralytics' `<dataset>.yaml` (`coco8.yaml`). When several
root YAML files have `names`, the import is refused, naming them, unless the `yaml_file` option
names one. Without a YAML, `classes.txt` / `obj.names` (one name per line) at the root; without
any of them the import is refused rather than inventing names.

The YAML's `train` / `val` / `test` set each image's subset: a folder, a `.txt` file of image
paths, or a list of them, relative to the YAML's `path:` (when that is a folder inside the
dataset) or to the YAML itself; Roboflow's `../train/images` also resolves inside the dataset.
An entry that points outside the dataset or at nothing is ignored with a warning. Every image
under the root is still imported; one the YAML does not list gets its subset from a
`train` / `val` / `valid` / `test` folder on its path, as without a YAML.

An image without a label file is skipped with a warning; an empty label file is a background
image (kept, no boxes). Segment lines (`class x1 y1 x2 y2 x3 y3 ...`) become the polygon's
bounding box. A line that is not numbers rejects the file with its line number; an unknown
class id only skips that box.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from appliance.store.errors import InvalidDataset
from appliance.importers.parsed import ImportWarning
from appliance.importers.sources import (
    RawBox,
    RawDataset,
    RawItem,
    count,
    find_file,
    is_ignored,
    is_image,
    list_images,
    number,
    preview,
    rel,
    subdirs,
    subset_of,
)

_YAML_FILES = ("data.yaml", "data.yml", "dataset.yaml")
_TEXT_FILES = ("classes.txt", "obj.names")
_SUBSET_KEYS = ("train", "val", "test")
_PROBE_BYTES = 1 << 20  # a root YAML larger than this is not opened to look for `names` (class lists are tiny)
LOOKED_FOR = "YOLO labels/ folders, a YAML with names (data.yaml, <dataset>.yaml) or obj.names"


def find(root: Path) -> list[str]:
    """Evidence for auto-detection: a names file (a root YAML with `names`, obj.names; not the
    generic classes.txt) or a `labels/` folder at the root or one level down."""
    evidence = [*yaml_candidates(root), *(["obj.names"] if (root / "obj.names").is_file() else [])]
    label_dirs = [root / "labels", *(d / "labels" for d in subdirs(root))]
    return evidence + [f"{rel(d, root)}/" for d in label_dirs if d.is_dir()]


def yaml_candidates(root: Path) -> list[str]:
    """The root YAML files that hold class names (`names`); else the conventional names that exist
    (so a broken `data.yaml` is reported, not ignored)."""
    files = _root_yamls(root)
    with_names = [p.name for p in files if _has_names(p)]
    return with_names or [p.name for p in files if p.name in _YAML_FILES]


def read(root: Path, yaml_file: str | None = None) -> RawDataset:
    warnings: list[ImportWarning] = []
    names, names_file, doc = _class_names(root, yaml_file)
    listed = _yaml_subsets(doc, root / names_file, root, warnings) if isinstance(doc, dict) else {}
    items: list[RawItem] = []
    folders: dict[str, None] = {}
    for image in list_images(root):
        label_file = _label_path(image, root)
        if not label_file.is_file():
            reason = f"missing label file {rel(label_file, root)}; skipped"
            warnings.append(ImportWarning(rel(image, root), reason))
            continue
        item = _read_labels(image, label_file, rel(label_file, root), names, warnings)
        item.subset_hint = listed.get(_real(image)) or next(
            filter(None, map(subset_of, image.relative_to(root).parts[:-1])), None)
        items.append(item)
        folders[rel(image.parent, root) + "/"] = None
    classes = list(dict.fromkeys(names[i] for i in sorted(names)))
    where = " + ".join(folders) if len(folders) <= 4 else preview(list(folders), 4)
    n_classes = count(len(classes), "class", "classes")
    detected = f"YOLO layout: {names_file} with {n_classes}, {where or 'no labelled image'}"
    return RawDataset("yolo", "detection", classes, items, warnings, detected)


def _label_path(image: Path, root: Path) -> Path:
    parts = list(image.relative_to(root).parts)
    folders = parts[:-1]
    if "images" in folders:
        parts[len(folders) - 1 - folders[::-1].index("images")] = "labels"
    return root.joinpath(*parts).with_suffix(".txt")


def _class_names(root: Path, yaml_file: str | None = None) -> tuple[dict[int, str], str, object]:
    """Class ids to names, the file they came from, and the parsed YAML (None for a text file)."""
    chosen = choose_yaml(root, yaml_file)
    if chosen is not None:
        doc = _load_yaml(root / chosen, chosen)
        return _yaml_names(doc, chosen), chosen, doc
    for name in _TEXT_FILES:
        if (root / name).is_file():
            return _text_names(root / name, name), name, None
    raise InvalidDataset(
        f"{root.name}: no YOLO class names (looked for a YAML with names such as "
        f"{', '.join(_YAML_FILES)} or <dataset>.yaml, and {', '.join(_TEXT_FILES)} at the root)"
    )


def choose_yaml(root: Path, yaml_file: str | None) -> str | None:
    """The root YAML to read class names from: `yaml_file` when given, else the only candidate.
    Several candidates and no choice: refused, naming them."""
    if yaml_file:
        if yaml_file not in {p.name for p in _root_yamls(root)}:
            found = ", ".join(yaml_candidates(root)) or "none"
            raise InvalidDataset(
                f"yaml_file: no {yaml_file} at the dataset root (YAML files with class names there: {found})"
            )
        return yaml_file
    candidates = yaml_candidates(root)
    if len(candidates) > 1:
        raise InvalidDataset(
            f"yaml_file: several YAML files at the dataset root have class names ({', '.join(candidates)}); "
            "choose one with the yaml_file option (Class-list YAML on the import form)"
        )
    return candidates[0] if candidates else None


def _root_yamls(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir()
                  if p.suffix.lower() in (".yaml", ".yml") and not is_ignored(p.name) and p.is_file())


def _has_names(path: Path) -> bool:
    try:
        if path.stat().st_size > _PROBE_BYTES:
            return False
        doc = _load_yaml(path, path.name)
    except (InvalidDataset, OSError):
        return False
    return isinstance(doc, dict) and "names" in doc


def _load_yaml(path: Path, name: str) -> object:
    try:
        return yaml.safe_load(_text(path, name))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InvalidDataset(f"{name}{where}: invalid YAML ({getattr(exc, 'problem', None) or exc})") from exc
    except (ValueError, RecursionError) as exc:  # an integer of more than 4300 digits; nesting too deep
        raise InvalidDataset(f"{name}: invalid YAML ({type(exc).__name__})") from exc


def _yaml_names(doc: object, name: str) -> dict[int, str]:
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, list):
        pairs = enumerate(names)
    elif isinstance(names, dict):
        pairs = names.items()
    else:
        raise InvalidDataset(f"{name}: 'names' must be a list of class names or an {{id: name}} mapping")
    result = {}
    for key, value in pairs:
        # Scalars only: str() of a nested (alias-expanded) structure could be enormous.
        # ASCII digits only: '²'.isdigit() is true, but int('²') fails.
        if not _is_id(key) or not isinstance(value, (str, int, float)) or not str(value).strip():
            raise InvalidDataset(f"{name}: names entry {key!r:.40}: {str(value)[:40]!r} is not an id and a name")
        result[int(key)] = str(value).strip()
    if not result:
        raise InvalidDataset(f"{name}: 'names' is empty")
    return result


def _is_id(key: object) -> bool:
    """A class id: a non-negative integer, or its ASCII digits (at most 9)."""
    if isinstance(key, bool):
        return False
    text = str(key) if isinstance(key, (int, str)) else ""
    return 0 < len(text) <= 9 and text.isascii() and text.isdigit()


def _text_names(path: Path, name: str) -> dict[int, str]:
    lines = _text(path, name).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InvalidDataset(f"{name}: no class names")
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            raise InvalidDataset(f"{name} line {line_no}: empty class name (it would shift the ids after it)")
    return {i: line.strip() for i, line in enumerate(lines)}


def _read_labels(
    image: Path, path: Path, name: str, names: dict[int, str], warnings: list[ImportWarning]
) -> RawItem:
    item = RawItem(image, normalized=True)
    for line_no, line in enumerate(_text(path, name).splitlines(), 1):
        values = line.split()
        if not values:
            continue
        try:
            class_id, coords = _class_id(values[0]), [number(v) for v in values[1:]]
        except ValueError:
            got = line.strip()[:80]
            raise InvalidDataset(f"{name} line {line_no}: expected 'class cx cy w h' numbers, got {got!r}") from None
        if len(coords) == 4:
            cx, cy, w, h = coords
            corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
            corners = (min(xs), min(ys), max(xs), max(ys))
        else:
            raise InvalidDataset(
                f"{name} line {line_no}: {len(values)} values; expected 5 (class cx cy w h) "
                "or a polygon (class x1 y1 x2 y2 x3 y3 ...)"
            )
        if class_id not in names:
            warnings.append(ImportWarning(name, f"line {line_no}: unknown class id {class_id}; box skipped"))
            item.dropped += 1
            continue
        item.boxes.append(RawBox(*corners, label=names[class_id], where=f"{name} line {line_no}"))
    return item


def _class_id(text: str) -> int:
    """'3' or '3.0' (some exporters write floats)."""
    value = number(text)
    if value < 0 or not value.is_integer():
        raise ValueError(text)
    return int(value)


def _text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidDataset(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _yaml_subsets(doc: dict, yaml_path: Path, root: Path, warnings: list[ImportWarning]) -> dict[Path, str]:
    """{real image path: subset} from the YAML's `train` / `val` / `test`. An image listed under
    two keys keeps the first (one warning per key)."""
    name = rel(yaml_path, root)
    real_root = root.resolve()
    bases = _yaml_bases(doc.get("path"), yaml_path.parent, real_root)
    listed: dict[Path, str] = {}
    for key in _SUBSET_KEYS:
        value = doc.get(key)
        if value is None:
            continue
        entries = value if isinstance(value, list) else [value]
        also = 0
        for entry in entries:
            if not isinstance(entry, str) or not entry.strip():
                # Named by type, never str(): an alias-expanded structure could be enormous.
                shown = repr(entry) if isinstance(entry, str) else f"a {type(entry).__name__}"
                warnings.append(ImportWarning(name, f"{key}: {shown[:60]} is not a folder or a .txt file "
                                                    "of image paths; ignored"))
                continue
            for image in _entry_images(entry, key, bases, real_root, root, name, warnings):
                if listed.setdefault(image, key) != key:
                    also += 1
        if also:
            warnings.append(ImportWarning(name, f"{key}: {count(also, 'image')} also listed under an earlier "
                                                "subset; kept there"))
    return listed


def _yaml_bases(path_value: object, yaml_dir: Path, real_root: Path) -> list[Path]:
    """Folders `train` / `val` / `test` are relative to: `path:` when it is a folder inside the
    dataset (Ultralytics), then the YAML's own folder. A `path:` on the exporter's disk or
    outside the dataset (`../datasets/coco8`) is not used: the data is where the YAML is."""
    bases = [yaml_dir]
    if isinstance(path_value, str) and path_value.strip() and not _is_absolute(path_value):
        candidate = (yaml_dir / path_value.strip()).resolve()
        if candidate.is_relative_to(real_root) and candidate.is_dir():
            bases.insert(0, candidate)
    return bases


def _is_absolute(text: str) -> bool:
    return text.strip().startswith(("/", "\\")) or re.match(r"[A-Za-z]:", text.strip()) is not None


def _entry_images(entry: str, key: str, bases: list[Path], real_root: Path, root: Path, name: str,
                  warnings: list[ImportWarning]) -> list[Path]:
    """The real paths of the images one `train` / `val` / `test` entry names."""
    text = entry.strip().replace("\\", "/")
    shown = text[:80]
    tries = [] if _is_absolute(text) else [base / text for base in bases]
    if text.startswith("../"):  # Roboflow's data.yaml: `../train/images` means `train/images` beside it
        tries += [base / text.removeprefix("../") for base in bases]
    outside = _is_absolute(text)
    for path in tries:
        try:
            real = path.resolve()
            exists = real.exists()
        except (OSError, RuntimeError):
            continue
        if not real.is_relative_to(real_root):
            outside = outside or exists
            continue
        if real.is_dir():
            return [_real(p) for p in list_images(real)]
        if real.is_file() and is_image(real):
            return [real]
        if real.is_file() and real.suffix.lower() == ".txt":
            return _listed_images(real, [real.parent, *bases], real_root, root, key, warnings)
    where = "points outside the dataset" if outside else "is not a folder, an image or a .txt file in the dataset"
    warnings.append(ImportWarning(name, f"{key}: {shown!r} {where}; ignored"))
    return []


def _listed_images(path: Path, bases: list[Path], real_root: Path, root: Path, key: str,
                   warnings: list[ImportWarning]) -> list[Path]:
    """The images a `.txt` list names, one path a line (`./images/a.jpg`, relative to the list's folder,
    the YAML's `path:` or the YAML; absolute paths by bare name)."""
    name = path.relative_to(real_root).as_posix()
    found, missing = [], []
    for line in _text(path, name).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image = find_file(line, bases)
        real = _real(image) if image is not None else None
        if real is None or not real.is_relative_to(real_root):
            missing.append(line[:80])
        else:
            found.append(real)
    if missing:
        warnings.append(ImportWarning(name, f"{key}: {count(len(missing), 'listed image')} not found in the "
                                            f"dataset ({preview(missing, 3)}); not assigned to {key}"))
    return found


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def annotation_files(root: Path, yaml_file: str | None = None) -> list[Path]:
    """The names file, the `.txt` image lists its YAML names, and the label files `read` loads
    (held to the annotation size limit together)."""
    try:
        chosen = choose_yaml(root, yaml_file)
    except InvalidDataset:
        chosen = None  # `read` reports it
    if chosen is not None:
        names = [root / chosen] + _list_files_named(root, root / chosen)
    else:
        names = [root / n for n in _TEXT_FILES if (root / n).is_file()][:1]
    return names + [p for p in (_label_path(image, root) for image in list_images(root)) if p.is_file()]


def _list_files_named(root: Path, yaml_path: Path) -> list[Path]:
    """The `.txt` image lists a (small) YAML names, resolved as `read` resolves them."""
    try:
        if yaml_path.stat().st_size > _PROBE_BYTES:
            return []
        doc = _load_yaml(yaml_path, yaml_path.name)
    except (InvalidDataset, OSError):
        return []
    if not isinstance(doc, dict):
        return []
    real_root = root.resolve()
    bases = _yaml_bases(doc.get("path"), yaml_path.parent, real_root)
    found = []
    for key in _SUBSET_KEYS:
        value = doc.get(key)
        for entry in value if isinstance(value, list) else [value]:
            if isinstance(entry, str) and entry.strip().lower().endswith(".txt") and not _is_absolute(entry):
                text = entry.strip().replace("\\", "/")
                for base in bases:
                    path = _real(base / text)
                    if path.is_relative_to(real_root) and path.is_file():
                        found.append(root / path.relative_to(real_root))
                        break
    return found
