"""Issue #13 items 4 and 5, hostile input (hypothesis): Pascal VOC XML with mutated bytes and odd
values, and Ultralytics YAML whose `path` / `train` / `val` / `test` are any YAML value. Each
import ends in a parsed dataset (problems as per-file warnings) or a clean `INVALID_DATASET`,
never another exception, and no warning names a server path. Bounded example counts."""

from __future__ import annotations

import yaml
from hypothesis import given, strategies as st

from tests.hostile.test_importer_fuzz import FEW, ODD_TEXT, byte_mutations, copy_of, json_values, outcome
from tests.services.test_import_formats_13 import ultralytics_coco8, voc_set, voc_xml

import pytest


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    base = tmp_path_factory.mktemp("templates13")
    voc_set(base / "voc")
    ultralytics_coco8(base / "coco8")
    return {"voc": base / "voc", "coco8": base / "coco8"}


@FEW
@given(data=st.data())
def test_voc_xml_with_mutated_bytes(templates, data):
    with copy_of(templates["voc"]) as root:
        xml = root / "Annotations" / data.draw(st.sampled_from(["000001.xml", "000002.xml", "000003.xml"]))
        xml.write_bytes(data.draw(byte_mutations(xml.read_bytes())))
        if data.draw(st.booleans()):
            lists = root / "ImageSets" / "Main" / "train.txt"
            lists.write_bytes(data.draw(byte_mutations(lists.read_bytes())))
        outcome(root, "voc", "detection")


xml_text = st.one_of(st.sampled_from(ODD_TEXT + ["0", "40", "-5", "1e308", "&amp;", "<![CDATA[x]]>"]),
                     st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8))


@FEW
@given(data=st.data())
def test_voc_object_values(templates, data):
    with copy_of(templates["voc"]) as root:
        objects = data.draw(st.lists(st.tuples(xml_text, xml_text, xml_text, xml_text, xml_text, xml_text),
                                     max_size=3))
        filename = data.draw(xml_text)
        text = voc_xml(filename.replace("<", "").replace("&", ""),
                       [tuple(v.replace("<", "").replace("&", "") for v in o) for o in objects])
        (root / "Annotations" / "000001.xml").write_text(text, encoding="utf-8", errors="surrogatepass")
        outcome(root, "voc", "detection")


@FEW
@given(data=st.data())
def test_ultralytics_yaml_subset_values(templates, data):
    with copy_of(templates["coco8"]) as root:
        doc = {"names": {0: "person", 1: "bicycle", 2: "car"}}
        for key in data.draw(st.lists(st.sampled_from(["path", "train", "val", "test"]), unique=True)):
            doc[key] = data.draw(st.one_of(json_values, st.sampled_from(
                ["..", "../..", "/", "/etc", "images/train", "../train/images", "train.txt", ".", "images/val/c.jpg"])))
        try:
            text = yaml.safe_dump(doc, allow_unicode=True)
        except (yaml.YAMLError, UnicodeError):
            text = "names: [a]\ntrain: [b"
        (root / "coco8.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        if data.draw(st.booleans()):
            (root / "train.txt").write_text("\n".join(data.draw(st.lists(xml_text, max_size=4))),
                                            encoding="utf-8", errors="surrogatepass")
        outcome(root, "yolo", "detection")
