"""Pascal VOC XML (detection): one `<annotation>` XML per image, an `<object>` per box with
`<name>` and `<bndbox>` `xmin ymin xmax ymax` in pixels.

Layouts, as the tools export them:
  - `Annotations/*.xml` + `JPEGImages/` (VOC itself, CVAT, Geti) or `images/` (Label Studio),
    also one or two folders down (`VOCdevkit/VOC2007/Annotations`),
  - XML files beside their images, optionally in `train/ valid/ test/` (Roboflow).
`ImageSets/Main/{train,val,test}.txt` (image ids, one a line; `trainval.txt` when there is no
train/val list) set each image's subset; else a `train` / `val` / `valid` / `test` folder on
the image's path does.

Real sets are inconsistent, so an XML finds its image by `<filename>`, then `<path>` (as written,
then by bare name, near the XML, in JPEGImages/ or images/, at the root), then by the XML's own
file stem (`<filename>` often names the file before it was renamed). An image no XML matches is
skipped with a warning; an XML without objects is a background image.

The XML is hostile input: it is parsed with defusedxml (no entity expansion, no external
resources). A malformed XML, or one that is not a VOC `<annotation>`, skips its image with a
warning naming the file; a bad `<object>` skips that box. `difficult` boxes are kept and
marked (`ParsedBox.difficult`, stored as `boxes.difficult`): evaluation ignores them, training uses them.
Boxes are clipped to the image later, with a warning, like every format's.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from appliance.importers.parsed import ImportWarning
from appliance.importers.sources import (
    RawBox,
    RawDataset,
    RawItem,
    count,
    find_file,
    is_image,
    list_files,
    number,
    preview,
    rel,
    subset_of,
)
from appliance.store.errors import InvalidDataset

LOOKED_FOR = "Pascal VOC: Annotations/*.xml (or VOC XML files beside the images)"
_SUBSET_LISTS = ("train", "val", "test")
_TRUE = ("1", "true", "yes")


def find(root: Path) -> list[str]:
    """Evidence for auto-detection: the folders holding VOC XML files."""
    return list(dict.fromkeys(f"{rel(p.parent, root)}/*.xml" if p.parent != root else "*.xml"
                              for p in _xml_files(root)))


def _xml_files(root: Path, files: list[Path] | None = None) -> list[Path]:
    """XML files in an `Annotations` folder, or beside an image of the same stem."""
    files = list_files(root) if files is None else files
    image_stems = {(p.parent, p.stem) for p in files if is_image(p)}
    return [p for p in files if p.suffix.lower() == ".xml" and (
        any(part.lower() == "annotations" for part in p.relative_to(root).parts[:-1])
        or (p.parent, p.stem) in image_stems)]


def read(root: Path) -> RawDataset:
    files = list_files(root)
    xmls = _xml_files(root, files)
    if not xmls:
        raise InvalidDataset(f"{root.name}: no Pascal VOC annotation file (looked for {LOOKED_FOR})")
    images = [p for p in files if is_image(p)]
    by_stem: dict[str, list[Path]] = {}
    for path in images:
        by_stem.setdefault(path.stem, []).append(path)
    warnings: list[ImportWarning] = []
    subsets, lists = _image_sets(root, files, warnings)
    items: list[RawItem] = []
    matched: set[Path] = set()
    difficult = 0
    for xml in xmls:
        name = rel(xml, root)
        doc = _parse(xml, name, warnings)
        if doc is None:
            # Its image is not imported as a background image: its objects are unknown, not absent.
            image = _match(xml, None, root, by_stem)
            if image is not None:
                matched.add(image)
            continue
        image = _match(xml, doc, root, by_stem)
        if image is None:
            shown = (doc.findtext("filename") or "").strip()[:80] or xml.stem
            warnings.append(ImportWarning(name, f"no image found for it ({shown!r}, nor one named {xml.stem}.*); "
                                                "skipped"))
            continue
        matched.add(image)
        item = RawItem(image)
        for index, obj in enumerate(doc.findall("object"), 1):
            box = _box(obj, name, index, warnings)
            if box is None:
                item.dropped += 1
                continue
            difficult += box.difficult
            item.boxes.append(box)
        folder_hint = next(filter(None, map(subset_of, image.relative_to(root).parts[:-1])), None)
        item.subset_hint = subsets.get(image.stem) or subsets.get(xml.stem) or folder_hint
        items.append(item)
    for image in images:
        if image not in matched:
            warnings.append(ImportWarning(rel(image, root), "no VOC annotation XML for this image; skipped"))
    classes = sorted({box.label for item in items for box in item.boxes})
    folders = list(dict.fromkeys(f"{rel(x.parent, root)}/" if x.parent != root else "./" for x in xmls))
    detected = (
        f"Pascal VOC: {count(len(xmls), 'XML file')} in {preview(folders, 3)}, "
        f"{count(len(classes), 'class', 'classes')} ({preview(classes)})"
    )
    if lists:
        detected += f", subsets from {', '.join(lists)}"
    if difficult:
        detected += f"; {count(difficult, 'box', 'boxes')} marked difficult (kept; evaluation ignores them)"
    return RawDataset("voc", "detection", classes, items, warnings, detected)


def _parse(xml: Path, name: str, warnings: list[ImportWarning]) -> Element | None:
    try:
        doc = fromstring(xml.read_bytes())
    except ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        reason = str(exc).split(":", 1)[0]
        warnings.append(ImportWarning(name, f"malformed XML ({reason}, line {line} column {column}); "
                                            "its image is skipped"))
        return None
    except DefusedXmlException as exc:
        warnings.append(ImportWarning(name, f"XML with entities or a DTD, refused ({type(exc).__name__}); "
                                            "its image is skipped"))
        return None
    except (ValueError, OSError) as exc:
        warnings.append(ImportWarning(name, f"unreadable XML ({type(exc).__name__}); its image is skipped"))
        return None
    if doc.tag != "annotation":
        warnings.append(ImportWarning(name, f"not a VOC annotation (root element <{doc.tag[:40]}>); "
                                            "its image is skipped"))
        return None
    return doc


def _match(xml: Path, doc: Element | None, root: Path, by_stem: dict[str, list[Path]]) -> Path | None:
    """The image an XML describes: `<filename>`, then `<path>`, then the XML's stem."""
    base = xml.parent.parent
    bases = [xml.parent, base / "JPEGImages", base / "images", root / "JPEGImages", root / "images", root]
    bases = list(dict.fromkeys(b for b in bases if b.is_relative_to(root)))
    for tag in ("filename", "path"):
        text = (doc.findtext(tag) or "").strip() if doc is not None else ""
        if text and (found := find_file(text, bases)) is not None and is_image(found):
            return found
    candidates = by_stem.get(xml.stem, [])
    if len(candidates) > 1:  # the same stem in two folders: the one where VOC keeps it
        preferred = [p for b in bases for p in candidates if p.parent == b]
        candidates = preferred[:1]
    return candidates[0] if len(candidates) == 1 else None


def _box(obj: Element, name: str, index: int, warnings: list[ImportWarning]) -> RawBox | None:
    where = f"{name} object {index}"
    label = (obj.findtext("name") or "").strip()
    bndbox = obj.find("bndbox")
    if not label:
        problem = "no <name>"
    elif bndbox is None:
        problem = "no <bndbox>"
    else:
        try:
            x1, y1, x2, y2 = (number((bndbox.findtext(tag) or "").strip()) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (ValueError, OverflowError):
            values = [(bndbox.findtext(tag) or "")[:20] for tag in ("xmin", "ymin", "xmax", "ymax")]
            problem = f"bndbox {values} is not four numbers"
        else:
            hard = (obj.findtext("difficult") or "").strip().lower() in _TRUE
            return RawBox(x1, y1, x2, y2, label, where, difficult=hard)
    warnings.append(ImportWarning(name, f"object {index}: {problem}; box skipped"))
    return None


def _image_sets(root: Path, files: list[Path], warnings: list[ImportWarning]) -> tuple[dict[str, str], list[str]]:
    """{image id: subset} from `ImageSets/Main/{train,val,test}.txt` (or `trainval.txt` as train
    when there is no train list), and the lists read. An id in two lists keeps the first."""
    lists = {p.stem.lower(): p for p in files
             if p.suffix.lower() == ".txt" and [x.lower() for x in p.relative_to(root).parts[-3:-1]] == ["imagesets", "main"]
             and p.stem.lower() in (*_SUBSET_LISTS, "trainval")}
    if "train" not in lists and "trainval" in lists:
        lists["train"] = lists["trainval"]
    subsets: dict[str, str] = {}
    read = []
    for subset in _SUBSET_LISTS:
        path = lists.get(subset)
        if path is None:
            continue
        name = rel(path, root)
        read.append(name)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as exc:
            warnings.append(ImportWarning(name, f"not UTF-8 text ({exc.reason}); ignored"))
            continue
        again = 0
        for line in lines:
            ident = line.split()[0] if line.split() else ""
            if ident and subsets.setdefault(ident, subset) != subset:
                again += 1
        if again:
            warnings.append(ImportWarning(name, f"{count(again, 'image id')} also in an earlier list; kept there"))
    return subsets, read


def annotation_files(root: Path) -> list[Path]:
    """The XML files and image-set lists `read` loads whole (held to the annotation size limit)."""
    files = list_files(root)
    sets = [p for p in files if p.suffix.lower() == ".txt"
            and [x.lower() for x in p.relative_to(root).parts[-3:-1]] == ["imagesets", "main"]]
    return _xml_files(root, files) + sets
