"""Detector label x affiliation → CoT type, through a mapping a deployment can override.

Owns the affiliation letters, the label synonyms (COCO class names first: the detectors are YOLO
models trained on COCO) and the grammar check for configured type templates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType


class Affiliation(StrEnum):
    """The contract's affiliation names; `letter` is the CoT type's second field."""

    UNKNOWN = "unknown"
    PENDING = "pending"
    ASSUMED_FRIEND = "assumed-friend"
    FRIEND = "friend"
    NEUTRAL = "neutral"
    SUSPECT = "suspect"
    HOSTILE = "hostile"

    @property
    def letter(self) -> str:
        return AFFILIATION_LETTERS[self]


AFFILIATION_LETTERS: Mapping[Affiliation, str] = MappingProxyType(
    {
        Affiliation.UNKNOWN: "u",
        Affiliation.PENDING: "p",
        Affiliation.ASSUMED_FRIEND: "a",
        Affiliation.FRIEND: "f",
        Affiliation.NEUTRAL: "n",
        Affiliation.SUSPECT: "s",
        Affiliation.HOSTILE: "h",
    }
)

PEOPLE = "a-?-G"
VEHICLE = "a-?-G-E-V"
VESSEL = "a-?-S"
AIRCRAFT = "a-?-A"
DRONE = "a-?-A-M-F-Q"
DEFAULT_TEMPLATE = "a-?-G"

_DEFAULT_SYNONYMS: Mapping[str, Iterable[str]] = {
    PEOPLE: ("person", "people", "pedestrian", "human", "man", "woman", "child", "rider"),
    VEHICLE: (
        "vehicle",
        "car",
        "truck",
        "bus",
        "motorcycle",
        "motorbike",
        "bicycle",
        "van",
        "pickup",
        "suv",
        "tractor",
        "train",
    ),
    VESSEL: ("vessel", "boat", "ship", "yacht", "canoe", "kayak", "jet ski"),
    AIRCRAFT: ("aircraft", "airplane", "aeroplane", "plane", "jet", "helicopter"),
    DRONE: ("drone", "uav", "uas", "quadcopter", "multirotor"),
}

# A template is a CoT type (ASCII fields joined by "-", as base-event-schema.xsd's `\w+(-\w+)*`
# but without the non-ASCII letters `\w` would let in) whose second field may be "?" for the
# affiliation letter. The optional ";…" suffix of the schema is not something config should set.
_TEMPLATE = re.compile(r"[A-Za-z0-9]+(?:-(?:\?|[A-Za-z0-9]+))*")
_SPACES = re.compile(r"[\s_]+")


@lru_cache(maxsize=1024)  # a deployment sees a few dozen labels, looked up per detection
def normalise_label(label: str) -> str:
    """Lower-case, trim, runs of spaces/underscores as one space ("Jet_Ski" -> "jet ski")."""
    return _SPACES.sub(" ", label).strip().casefold()


def validate_template(template: str) -> str:
    """Return `template` if it is a CoT type template, else raise ValueError saying why."""
    if not _TEMPLATE.fullmatch(template):
        raise ValueError(
            f"CoT type template {template!r} does not match the CoT type grammar "
            "(ASCII letters/digits joined by '-', e.g. 'a-?-G-E-V')"
        )
    fields = template.split("-")
    if "?" in fields[:1] + fields[2:]:
        raise ValueError(
            f"CoT type template {template!r}: '?' may only stand for the affiliation (2nd field)"
        )
    if "?" in fields and fields[0] != "a":
        raise ValueError(
            f"CoT type template {template!r}: only atom types ('a-…') have an affiliation"
        )
    return template


@dataclass(frozen=True, slots=True)
class TypeMapping:
    """Label → CoT type template; `?` is replaced by the affiliation letter.

    Labels are compared after `normalise_label`. Unknown labels get `default`.
    """

    templates: Mapping[str, str] = field(default_factory=dict)
    default: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        checked = {}
        for label, template in self.templates.items():
            key = normalise_label(label)
            if not key:
                raise ValueError("a type mapping label must not be empty")
            checked[key] = validate_template(template)
        object.__setattr__(self, "templates", MappingProxyType(checked))
        validate_template(self.default)

    @classmethod
    def defaults(cls) -> TypeMapping:
        """The documented defaults: people, vehicles, vessels, aircraft, drones, else `a-?-G`."""
        return cls(
            {label: template for template, labels in _DEFAULT_SYNONYMS.items() for label in labels}
        )

    @classmethod
    def from_config(
        cls,
        overrides: Mapping[str, str],
        *,
        default: str | None = None,
        base: TypeMapping | None = None,
    ) -> TypeMapping:
        """`base` (the defaults unless given) with `overrides` laid over it; all validated."""
        start = base if base is not None else cls.defaults()
        merged = dict(start.templates)
        merged.update(overrides)
        return cls(merged, default if default is not None else start.default)

    def template_for(self, label: str) -> str:
        return self.templates.get(normalise_label(label), self.default)


DEFAULT_TYPE_MAPPING = TypeMapping.defaults()


def cot_type(
    label: str,
    affiliation: Affiliation | str = Affiliation.UNKNOWN,
    mapping: TypeMapping = DEFAULT_TYPE_MAPPING,
) -> str:
    """The CoT type for a detection: e.g. ("person", "hostile") → "a-h-G"."""
    letter = Affiliation(affiliation).letter
    return mapping.template_for(label).replace("?", letter)
