"""A small HTML query helper for tests (stdlib only): parse a page or fragment, then find
elements with simple CSS selectors, so tests check structure and values rather than exact markup.

Selectors: `tag`, `.class`, `#id`, `[attr]`, `[attr=value]` (quotes optional), combined
(`tr.export-row[data-format=onnx]`) and joined by spaces for descendants (`#projects-table tr`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_PART = re.compile(r"([a-zA-Z][\w-]*)|\.([\w-]+)|#([\w-]+)|\[([\w-]+)(?:=(?:\"([^\"]*)\"|'([^']*)'|([^\]]*)))?\]")


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: Element | None = None
    children: list = field(default_factory=list)  # Elements and text strings

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        """The text content, whitespace collapsed."""
        parts = []

        def walk(node):
            for child in node.children:
                if isinstance(child, str):
                    parts.append(child)
                else:
                    walk(child)

        walk(self)
        return " ".join("".join(parts).split())

    def iter(self):
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.iter()

    def select(self, selector: str) -> list[Element]:
        steps = [_compile(step) for step in selector.split()]
        found = [el for el in self.iter() if steps[-1](el) and _ancestors_match(el, steps[:-1])]
        return found

    def select_one(self, selector: str) -> Element:
        found = self.select(selector)
        assert found, f"nothing matches {selector!r}"
        return found[0]

    def next_text(self) -> str:
        """The text right after this element, up to the next element (a label after an icon)."""
        siblings = self.parent.children
        i = next(i for i, c in enumerate(siblings) if c is self)
        text = []
        for node in siblings[i + 1:]:
            if isinstance(node, Element):
                break
            text.append(node)
        return " ".join("".join(text).split())


def _compile(step: str):
    checks = []
    pos = 0
    while pos < len(step):
        m = _PART.match(step, pos)
        assert m, f"unsupported selector {step!r}"
        tag, cls, ident, attr = m.group(1), m.group(2), m.group(3), m.group(4)
        value = next((v for v in m.group(5, 6, 7) if v is not None), None)
        if tag:
            checks.append(lambda el, t=tag.lower(): el.tag == t)
        elif cls:
            checks.append(lambda el, c=cls: c in el.classes)
        elif ident:
            checks.append(lambda el, i=ident: el.attrs.get("id") == i)
        elif value is None:
            checks.append(lambda el, a=attr: a in el.attrs)
        else:
            checks.append(lambda el, a=attr, v=value: el.attrs.get(a) == v)
        pos = m.end()
    return lambda el: all(check(el) for check in checks)


def _ancestors_match(el: Element, steps) -> bool:
    node = el.parent
    for step in reversed(steps):
        while node is not None and not (node.tag != "#root" and step(node)):
            node = node.parent
        if node is None:
            return False
        node = node.parent
    return True


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        el = Element(tag, {k: (v if v is not None else "") for k, v in attrs}, parent=self.current)
        self.current.children.append(el)
        if tag not in VOID:
            self.current = el

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Element(tag, {k: (v or "") for k, v in attrs}, parent=self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(html: str) -> Element:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root
