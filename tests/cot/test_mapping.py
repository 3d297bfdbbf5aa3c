"""Label x affiliation -> CoT type: the documented defaults, synonyms, and validated overrides."""

from __future__ import annotations

import pytest

from copbridge.cot import (
    AFFILIATION_LETTERS,
    DEFAULT_TYPE_MAPPING,
    Affiliation,
    TypeMapping,
    cot_type,
)


def test_affiliation_letters_follow_cot() -> None:
    assert {a.value: a.letter for a in Affiliation} == {
        "unknown": "u",
        "pending": "p",
        "assumed-friend": "a",
        "friend": "f",
        "neutral": "n",
        "suspect": "s",
        "hostile": "h",
    }
    assert set(AFFILIATION_LETTERS) == set(Affiliation)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["person", "pedestrian", "people", "Person", " PERSON "], "a-u-G"),
        (["car", "truck", "bus", "motorcycle", "vehicle", "bicycle"], "a-u-G-E-V"),
        (["boat", "ship", "vessel"], "a-u-S"),
        (["airplane", "aircraft", "helicopter", "aeroplane"], "a-u-A"),
        (["drone", "uav", "UAV"], "a-u-A-M-F-Q"),
        (["dog", "traffic light", "", "🦄"], "a-u-G"),
    ],
)
def test_default_mapping_groups_coco_labels_and_synonyms(labels: list[str], expected: str) -> None:
    for label in labels:
        assert cot_type(label) == expected, label


def test_the_contract_example_is_unknown_ground() -> None:
    assert cot_type("person", "unknown") == "a-u-G"


@pytest.mark.parametrize("affiliation", list(Affiliation))
def test_affiliation_letter_goes_in_the_second_field(affiliation: Affiliation) -> None:
    assert cot_type("truck", affiliation) == f"a-{affiliation.letter}-G-E-V"
    assert cot_type("truck", affiliation.value) == f"a-{affiliation.letter}-G-E-V"


def test_unknown_affiliation_name_is_refused() -> None:
    with pytest.raises(ValueError, match="joker"):
        cot_type("person", "joker")


def test_config_overrides_and_extends_the_defaults() -> None:
    mapping = TypeMapping.from_config(
        {"car": "a-?-G-E-V-C", "Fire_Truck": "a-?-G-E-V-U-F", "pothole": "b-m-p-s-p-i"},
        default="a-?-X",
    )
    assert cot_type("car", "hostile", mapping) == "a-h-G-E-V-C"
    assert cot_type("fire truck", "friend", mapping) == "a-f-G-E-V-U-F"
    assert cot_type("pothole", "hostile", mapping) == "b-m-p-s-p-i"  # no "?", fixed type
    assert cot_type("truck", "neutral", mapping) == "a-n-G-E-V"  # defaults kept
    assert cot_type("giraffe", "suspect", mapping) == "a-s-X"
    assert cot_type("car", "hostile") == "a-h-G-E-V"  # the defaults did not change


@pytest.mark.parametrize(
    "template",
    [
        "",
        "a-?-",
        "a--G",
        "a-?-G;x",
        "a-u-G E",
        "a-h-Ġ",
        "a-?-?",
        "?-u-G",
        "b-?-G",
        "a-?-G_x",
        "a?-G",
    ],
)
def test_invalid_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="template"):
        TypeMapping.from_config({"thing": template})
    with pytest.raises(ValueError, match="template"):
        TypeMapping(default=template)


def test_empty_label_in_config_is_refused() -> None:
    with pytest.raises(ValueError, match="label"):
        TypeMapping.from_config({"  ": "a-?-G"})


def test_default_mapping_is_read_only() -> None:
    with pytest.raises(TypeError):
        DEFAULT_TYPE_MAPPING.templates["person"] = "a-?-A"  # type: ignore[index]
