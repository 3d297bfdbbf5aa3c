"""The MITRE CoT XSDs as validators: the base event schema plus one sub-schema per detail child."""

from __future__ import annotations

import copy
from pathlib import Path

from lxml import etree

DATA = Path(__file__).parent / "data" / "cot"
XS = "{http://www.w3.org/2001/XMLSchema}"

# Detail element -> the sub-schema that declares it as its root element.
SUB_SCHEMAS = {
    "contact": "contact-schema.xsd",
    "link": "link-schema.xsd",
    "remarks": "remarks-schema.xsd",
    "sensor": "sensor-schema.xsd",
    "track": "track-schema.xsd",
    "_flow-tags_": "flow-tags-schema.xsd",
    "image": "image-schema.xsd",
}
WITHOUT_SCHEMA = frozenset({"precisionlocation", "TakControl"})
"""ATAK's own detail elements (and the TAK protocol negotiation's): MITRE has no schema for them."""


def root_elements(xsd: str) -> list[str]:
    """The global element names an XSD declares."""
    tree = etree.parse(str(DATA / xsd))
    return [str(e.get("name")) for e in tree.getroot().iterchildren(f"{XS}element")]


class CotSchemas:
    """Validates a CoT document: `<event>` by the base schema, each detail child by its own."""

    def __init__(self) -> None:
        self.base = etree.XMLSchema(etree.parse(str(DATA / "base-event-schema.xsd")))
        self.sub = {
            tag: etree.XMLSchema(etree.parse(str(DATA / xsd))) for tag, xsd in SUB_SCHEMAS.items()
        }

    def errors(self, document: bytes) -> list[str]:
        root = etree.fromstring(document)
        problems: list[str] = []
        if not self.base.validate(root):
            problems.append(f"event: {self.base.error_log}")
        detail = root.find("detail")
        for child in [] if detail is None else list(detail):
            tag = str(child.tag)
            schema = self.sub.get(tag)
            if schema is None:
                if tag not in WITHOUT_SCHEMA:
                    problems.append(f"<{tag}> has no sub-schema to validate it")
                continue
            if not schema.validate(etree.ElementTree(copy.deepcopy(child))):
                problems.append(f"<{tag}>: {schema.error_log}")
        return problems

    def assert_valid(self, document: bytes) -> None:
        problems = self.errors(document)
        assert not problems, "\n".join(problems) + "\n" + document.decode("utf-8")
