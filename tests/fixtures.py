"""Generated datasets for tests and benchmarks: tiny images in every import format.

Each `make_*` writes a dataset under `root` (created if missing) and returns a `Generated`
describing what a correct import must produce, so tests can check counts, labels and boxes.
Images are deterministic for a `seed` and all distinct (no accidental duplicates):

- classification: each image is its class colour with a little seeded noise, so a small model
  can learn the classes (red vs blue vs ...);
- detection: a grey noisy background with one rectangle per image, filled with its class
  colour; the box is that rectangle, in pixels.

`zip_dir(folder, zip_path)` zips a generated folder (as "zip the folder" does: one top folder).
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

COLOURS = {
    "red": (220, 40, 40),
    "blue": (40, 70, 220),
    "green": (40, 180, 60),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 190),
    "cyan": (40, 200, 210),
    "orange": (240, 140, 30),
    "black": (20, 20, 20),
}


@dataclass
class GenBox:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str


@dataclass
class GenItem:
    relpath: str  # posix path of the image under the dataset root
    label: str | None = None  # classification
    boxes: list[GenBox] = field(default_factory=list)  # detection
    subset: str | None = None  # subset hint the layout carries (nested train/ val/ trees)


@dataclass
class Generated:
    root: Path
    format: str  # folder | csv | coco | yolo
    task: str  # classification | detection
    classes: list[str]
    items: list[GenItem]
    size: int

    @property
    def count(self) -> int:
        return len(self.items)

    def by_name(self) -> dict[str, GenItem]:
        """original_name (relpath) → item, to match imported image records."""
        return {item.relpath: item for item in self.items}

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            labels = {item.label} if item.label else {b.label for b in item.boxes}
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- images


def colour_of(name: str) -> tuple[int, int, int]:
    if name in COLOURS:
        return COLOURS[name]
    rng = random.Random(name)
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _noise(size: tuple[int, int], rng: random.Random) -> Image.Image:
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def class_image(colour: tuple[int, int, int], size: int, rng: random.Random, noise: float = 0.2) -> Image.Image:
    """A `size` square of `colour` with seeded noise (distinct for each rng state)."""
    base = Image.new("RGB", (size, size), colour)
    return Image.blend(base, _noise((size, size), rng), noise)


def box_image(size: int, label: str, rng: random.Random) -> tuple[Image.Image, GenBox]:
    """Grey noisy background with one filled rectangle of the class colour; returns it and its box."""
    im = Image.blend(Image.new("RGB", (size, size), (128, 128, 128)), _noise((size, size), rng), 0.3)
    w = rng.randint(size // 4, size // 2)
    h = rng.randint(size // 4, size // 2)
    x1 = rng.randint(0, size - w)
    y1 = rng.randint(0, size - h)
    im.paste(colour_of(label), (x1, y1, x1 + w, y1 + h))
    return im, GenBox(float(x1), float(y1), float(x1 + w), float(y1 + h), label)


def save_image(im: Image.Image, path: Path, quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, format="JPEG", quality=quality)
    else:
        im.save(path)
    return path


def jpeg_bytes(size: int, rng: random.Random, quality: int = 85) -> bytes:
    """A random-content JPEG (benchmarks: realistic decode cost, no two alike)."""
    buf = io.BytesIO()
    _noise((size, size), rng).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_corrupt(path: Path) -> Path:
    """A file named like a JPEG that no decoder accepts (a truncated header + junk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 8)
    return path


# ----------------------------------------------------------------------------- classification


def make_classification_folder(
    root: Path, classes=("red", "blue"), per_class: int = 12, size: int = 32, *,
    nested: bool = False, seed: int = 0, ext: str = ".jpg",
) -> Generated:
    """`root/<class>/<class>_NNN.jpg`; with `nested`, `root/train/<class>/…` and `root/val/<class>/…`
    (every fourth image in val)."""
    root = Path(root)
    rng = random.Random(seed)
    items = []
    for cls in classes:
        for i in range(per_class):
            subset = ("val" if i % 4 == 3 else "train") if nested else None
            rel = f"{subset}/{cls}/{cls}_{i:03d}{ext}" if subset else f"{cls}/{cls}_{i:03d}{ext}"
            save_image(class_image(colour_of(cls), size, rng), root / rel)
            items.append(GenItem(rel, label=cls, subset=subset))
    return Generated(root, "folder", "classification", sorted(classes), items, size)


def make_classification_csv(
    root: Path, classes=("red", "blue"), per_class: int = 6, size: int = 32, *, seed: int = 1,
) -> Generated:
    """`root/images/*.jpg` + `root/labels.csv` (`filename,label`, with a header)."""
    root = Path(root)
    rng = random.Random(seed)
    items, lines = [], ["filename,label"]
    for cls in classes:
        for i in range(per_class):
            name = f"{cls}_{i:03d}.jpg"
            save_image(class_image(colour_of(cls), size, rng), root / "images" / name)
            items.append(GenItem(f"images/{name}", label=cls))
            lines.append(f"{name},{cls}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return Generated(root, "csv", "classification", sorted(classes), items, size)


# ----------------------------------------------------------------------------- detection


def _detection_items(classes, n: int, size: int, seed: int, folder: Path, prefix: str = "img"):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = classes[i % len(classes)]
        im, box = box_image(size, label, rng)
        name = f"{prefix}_{i:03d}.jpg"
        save_image(im, folder / name)
        out.append((name, box))
    return out


def make_detection_coco(
    root: Path, n: int = 8, size: int = 96, classes=("red", "blue"), *, seed: int = 2,
    background: int = 0,
) -> Generated:
    """COCO layout: `root/images/*.jpg` + `root/annotations/instances_default.json`.

    Category ids are deliberately non-contiguous (10, 20, …). `background` extra images have no
    annotation (kept as background images).
    """
    root = Path(root)
    generated = _detection_items(list(classes), n, size, seed, root / "images")
    cat_ids = {cls: (i + 1) * 10 for i, cls in enumerate(classes)}
    images, annotations, items = [], [], []
    for image_id, (name, box) in enumerate(generated, 1):
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        annotations.append({
            "id": image_id, "image_id": image_id, "category_id": cat_ids[box.label], "iscrowd": 0,
            "bbox": [box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1],
            "area": (box.x2 - box.x1) * (box.y2 - box.y1),
        })
        items.append(GenItem(f"images/{name}", boxes=[box]))
    rng = random.Random(seed + 1000)
    for j in range(background):
        name = f"bg_{j:03d}.jpg"
        save_image(class_image((128, 128, 128), size, rng, noise=0.4), root / "images" / name)
        images.append({"id": 1000 + j, "file_name": name, "width": size, "height": size})
        items.append(GenItem(f"images/{name}"))
    doc = {
        "info": {"description": "generated"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_ids[c], "name": c, "supercategory": "shape"} for c in classes],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    return Generated(root, "coco", "detection", sorted(classes), items, size)


def make_detection_yolo(
    root: Path, n: int = 8, size: int = 96, classes=("red", "blue"), *, seed: int = 3,
    names: str = "yaml-list", split: bool = False,
) -> Generated:
    """YOLO layout: `root/images/*.jpg`, `root/labels/*.txt` (`class cx cy w h`, normalized).

    `names`: "yaml-list" (`names: [a, b]`), "yaml-dict" (`names: {0: a, 1: b}`) or "classes.txt".
    `split`: ultralytics' `images/train` + `images/val` (every fourth image in val).
    """
    root = Path(root)
    rng_items = _detection_items(list(classes), n, size, seed, root / "_tmp")
    items = []
    for i, (name, box) in enumerate(rng_items):
        subset = ("val" if i % 4 == 3 else "train") if split else None
        sub = f"{subset}/" if subset else ""
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        (root / "_tmp" / name).rename(root / "images" / sub / name)
        cx, cy = (box.x1 + box.x2) / 2 / size, (box.y1 + box.y2) / 2 / size
        w, h = (box.x2 - box.x1) / size, (box.y2 - box.y1) / size
        label_file = root / "labels" / sub / (Path(name).stem + ".txt")
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text(f"{list(classes).index(box.label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        items.append(GenItem(f"images/{sub}{name}", boxes=[box], subset=subset))
    (root / "_tmp").rmdir()
    if names == "yaml-list":
        (root / "data.yaml").write_text(f"nc: {len(classes)}\nnames: [{', '.join(classes)}]\n")
    elif names == "yaml-dict":
        (root / "data.yaml").write_text("names:\n" + "".join(f"  {i}: {c}\n" for i, c in enumerate(classes)))
    else:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return Generated(root, "yolo", "detection", sorted(classes), items, size)


def make_detection_csv(
    root: Path, n: int = 8, size: int = 96, classes=("red", "blue"), *, seed: int = 4,
) -> Generated:
    """`root/*.jpg` + `root/annotations.csv` with `filename,xmin,ymin,xmax,ymax,label` (header)."""
    root = Path(root)
    generated = _detection_items(list(classes), n, size, seed, root)
    lines = ["filename,xmin,ymin,xmax,ymax,label"]
    items = []
    for name, b in generated:
        lines.append(f"{name},{b.x1:g},{b.y1:g},{b.x2:g},{b.y2:g},{b.label}")
        items.append(GenItem(name, boxes=[b]))
    (root / "annotations.csv").write_text("\n".join(lines) + "\n")
    return Generated(root, "csv", "detection", sorted(classes), items, size)


MAKERS = {
    "folder": make_classification_folder,
    "folder-nested": lambda root, **kw: make_classification_folder(root, nested=True, **kw),
    "csv": make_classification_csv,
    "csv-boxes": make_detection_csv,
    "coco": make_detection_coco,
    "yolo": make_detection_yolo,
}


# ----------------------------------------------------------------------------- archives


def zip_dir(folder: Path, zip_path: Path, *, top: str | None = None) -> Path:
    """Zip `folder` as `top/…` (default: the folder's name), like "compress folder" does."""
    folder, zip_path = Path(folder), Path(zip_path)
    top = folder.name if top is None else top
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                arc = path.relative_to(folder).as_posix()
                zf.write(path, f"{top}/{arc}" if top else arc)
    return zip_path


# ----------------------------------------------------------------------------- API helpers
# `http` is anything with httpx's request API: the in-process TestClient or `server.http`.

TERMINAL = ("completed", "failed", "cancelled")


def create_project(http, task: str = "classification", name: str | None = None) -> str:
    r = http.post("/api/projects", json={"name": name or f"{task} test", "task": task})
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


def start_path_import(http, project_id: str, path: Path | str, fmt: str = "auto"):
    return http.post("/api/datasets/import/local",
                     json={"project_id": project_id, "source_path": str(path), "format": fmt})


def start_zip_import(http, project_id: str, zip_path: Path, fmt: str = "auto", filename: str | None = None):
    with open(zip_path, "rb") as f:
        return http.post("/api/datasets/import/upload", data={"project_id": project_id, "format": fmt},
                         files={"file": (filename or Path(zip_path).name, f, "application/zip")})


def wait_import(http, project_id: str, import_id: str, timeout: float = 30.0) -> dict:
    """Poll the import job until it is completed, failed or cancelled; return its record."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        r = http.get(f"/api/datasets/{project_id}/imports/{import_id}")
        assert r.status_code == 200, r.text
        job = r.json()["data"]
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"import {import_id} still {job['status']} after {timeout}s: {job}")
        time.sleep(0.05)


def import_and_wait(http, project_id: str, source: Path, fmt: str = "auto", timeout: float = 30.0) -> dict:
    """Import a folder (by server path) or a `.zip` (by upload) and wait for the job to end."""
    source = Path(source)
    r = start_zip_import(http, project_id, source, fmt) if source.suffix == ".zip" else start_path_import(http, project_id, source, fmt)
    assert r.status_code == 202, r.text
    return wait_import(http, project_id, r.json()["data"]["id"], timeout)


def list_all_images(http, project_id: str, **filters) -> list[dict]:
    """Every image of the project matching `filters` (label, split_id, subset), all pages."""
    items, offset = [], 0
    while True:
        r = http.get(f"/api/datasets/{project_id}/images", params={"offset": offset, "limit": 500, **filters})
        assert r.status_code == 200, r.text
        page = r.json()["data"]
        items += page["items"]
        offset += 500
        if offset >= page["total"]:
            return items
