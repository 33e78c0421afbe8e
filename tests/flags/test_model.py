"""The flag model: validation, flagd import and export, staleness."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from pydantic import ValidationError

from communicator import DeployctlError
from flags import (
    EXAMPLE_FLAG,
    FLAGD_SCHEMA,
    Flag,
    FlagError,
    FlagState,
    flagd_document,
    flags_from_flagd_document,
)

HELP = {"help": "Shows the new page; if errors rise, serve off.", "help_uri": "https://e.com/f"}


def flagd_flag(**overrides: object) -> dict[str, object]:
    """A valid flagd flag definition, with some properties replaced."""
    data: dict[str, object] = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "metadata": dict(HELP),
    }
    data.update(overrides)
    return data


def test_from_flagd_reads_help_and_the_rest_from_metadata() -> None:
    """help, help_uri, owner, tags and expires come out of flagd metadata into fields."""
    metadata = {**HELP, "owner": "team-a", "tags": "ui, checkout", "expires": "2027-03-31", "v": 2}
    flag = Flag.from_flagd("new-page", flagd_flag(metadata=metadata))
    assert flag.key == "new-page"
    assert flag.state is FlagState.ENABLED
    assert flag.help == HELP["help"]
    assert flag.help_uri == HELP["help_uri"]
    assert flag.owner == "team-a"
    assert flag.tags == ("ui", "checkout")
    assert flag.expires == date(2027, 3, 31)
    assert flag.metadata == {"v": 2}
    assert flag.kind == "boolean"


def test_to_flagd_round_trips() -> None:
    """to_flagd puts our fields back in metadata, and from_flagd reads the same flag."""
    metadata = {**HELP, "owner": "o", "tags": "a,b", "expires": "2027-01-02T03:04:05+00:00"}
    targeting = {"if": [{"==": [{"var": "tier"}, "gold"]}, "on", None]}
    flag = Flag.from_flagd("f", flagd_flag(metadata=metadata, targeting=targeting))
    data = flag.to_flagd()
    assert data["metadata"] == metadata
    assert set(data) == {"state", "variants", "defaultVariant", "targeting", "metadata"}
    assert Flag.from_flagd("f", data) == flag


@pytest.mark.parametrize("missing", ["help", "help_uri"])
def test_a_flag_without_help_is_refused_with_an_example(missing: str) -> None:
    """A flag missing help or help_uri is refused, and the error shows a valid flag."""
    metadata = {k: v for k, v in HELP.items() if k != missing}
    with pytest.raises(FlagError) as caught:
        Flag.from_flagd("f", flagd_flag(metadata=metadata))
    assert isinstance(caught.value, DeployctlError)
    assert caught.value.key == "f"
    assert f"`{missing}` is missing" in str(caught.value)
    assert EXAMPLE_FLAG in str(caught.value)
    example = json.loads(EXAMPLE_FLAG)
    assert Flag.from_flagd("example", example).help


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"defaultVariant": "maybe"}, "not one of the variants"),
        ({"variants": {"on": True, "one": 1}}, "one type"),
        ({"variants": {"a": None}, "defaultVariant": "a"}, "not a boolean"),
        ({"variants": {}}, "variants"),
        ({"variants": {"": True}, "defaultVariant": None}, "must not be empty"),
        ({"metadata": {**HELP, "help_uri": "/relative"}}, "absolute http(s) URL"),
        ({"metadata": {**HELP, "help_uri": "ftp://e.com/x"}}, "absolute http(s) URL"),
        ({"metadata": {**HELP, "help": "  "}}, "help must say"),
        ({"state": "ON"}, "state"),
        ({"colour": "red"}, "not a flag property"),
        ({"targeting": ["not", "an", "object"]}, "targeting"),
        ({"metadata": "text"}, "metadata must be a JSON object"),
    ],
)
def test_invalid_definitions_are_refused(overrides: dict[str, object], words: str) -> None:
    """Each kind of invalid definition gets an error naming the problem."""
    with pytest.raises(FlagError, match="(?s)" + words.replace("(", r"\(").replace(")", r"\)")):
        Flag.from_flagd("f", flagd_flag(**overrides))


def test_variants_of_one_type_are_accepted() -> None:
    """Strings, numbers (ints and floats together) and objects make valid flags."""
    for variants in ({"a": "x", "b": "y"}, {"a": 1, "b": 2.5}, {"a": {"k": 1}, "b": [1, 2]}):
        flag = Flag.from_flagd("f", flagd_flag(variants=variants, defaultVariant="a"))
        assert flag.variants == variants


def test_a_boolean_default_variant_names_the_true_or_false_variant() -> None:
    """flagd accepts `defaultVariant: true` for a variant named "true"; so do we."""
    variants = {"true": True, "false": False}
    flag = Flag.from_flagd("f", flagd_flag(variants=variants, defaultVariant=True))
    assert flag.default_variant == "true"
    assert Flag.from_flagd("f", flagd_flag(defaultVariant="")).default_variant is None


def test_building_a_flag_directly_validates_too() -> None:
    """Constructing a Flag in Python applies the same rules (pydantic errors)."""
    flag = Flag(key="k", variants={"a": "x"}, default_variant="a", **HELP)
    assert flag.state is FlagState.ENABLED
    with pytest.raises(ValidationError):
        Flag(key="k", variants={"a": "x"}, default_variant="a", help="h", help_uri="e.com")
    with pytest.raises(ValidationError, match="fields of the flag"):
        Flag(key="k", variants={"a": "x"}, metadata={"owner": "x"}, **HELP)
    with pytest.raises(ValidationError, match="commas"):
        Flag(key="k", variants={"a": "x"}, tags=("a,b",), **HELP)


def test_is_stale_after_a_date_or_a_moment() -> None:
    """A flag is stale after its expiry date (all of that day) or moment; never without one."""
    by_date = Flag(key="k", variants={"a": 1}, expires=date(2027, 3, 31), **HELP)
    assert not by_date.is_stale(datetime(2027, 3, 31, 23, 59, tzinfo=UTC))
    assert by_date.is_stale(datetime(2027, 4, 1, tzinfo=UTC))
    by_moment = Flag(key="k", variants={"a": 1}, expires="2027-03-31T12:00:00Z", **HELP)
    assert not by_moment.is_stale(datetime(2027, 3, 31, 12, 0))
    assert by_moment.is_stale(datetime(2027, 3, 31, 12, 1))
    assert not Flag(key="k", variants={"a": 1}, **HELP).is_stale(datetime(3000, 1, 1))


def test_document_round_trip_with_evaluators_and_shared_metadata() -> None:
    """A flagd document's $evaluators are resolved and its metadata shared by its flags."""
    document = {
        "$schema": FLAGD_SCHEMA,
        "metadata": {"owner": "team-x", "flagSetId": "shop"},
        "$evaluators": {
            "gold": {"in": [{"var": "tier"}, ["gold", "platinum"]]},
            "gold_eu": {"and": [{"$ref": "gold"}, {"==": [{"var": "region"}, "eu"]}]},
        },
        "flags": {
            "a": flagd_flag(targeting={"if": [{"$ref": "gold_eu"}, "on", "off"]}),
            "b": flagd_flag(metadata={**HELP, "owner": "team-b"}),
        },
    }
    flags = flags_from_flagd_document(json.dumps(document))
    assert flags["a"].targeting == {
        "if": [
            {
                "and": [
                    {"in": [{"var": "tier"}, ["gold", "platinum"]]},
                    {"==": [{"var": "region"}, "eu"]},
                ]
            },
            "on",
            "off",
        ]
    }
    assert flags["a"].owner == "team-x"
    assert flags["a"].metadata == {"flagSetId": "shop"}
    assert flags["b"].owner == "team-b"
    text = flagd_document(flags)
    written = json.loads(text)
    assert written["$schema"] == FLAGD_SCHEMA
    assert flags_from_flagd_document(text) == flags
    assert flagd_document(list(flags.values())) == text


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ("{", "not JSON"),
        ("[]", '"flags" object'),
        ('{"flags": {}, "$evaluators": []}', "must be JSON objects"),
        (
            json.dumps({"flags": {"a": flagd_flag(targeting={"$ref": "nope"})}}),
            "names no evaluator",
        ),
        (
            json.dumps(
                {
                    "$evaluators": {"x": {"$ref": "y"}, "y": {"$ref": "x"}},
                    "flags": {"a": flagd_flag(targeting={"$ref": "x"})},
                }
            ),
            "loop",
        ),
    ],
)
def test_invalid_documents_are_refused(document: str, words: str) -> None:
    """Broken documents and unresolvable $ref are reported as FlagError."""
    with pytest.raises(FlagError, match=words):
        flags_from_flagd_document(document)


def test_every_bad_flag_of_a_document_is_reported() -> None:
    """A document's problems are listed for every flag, not only the first."""
    document = {"flags": {"a": flagd_flag(metadata={}), "b": flagd_flag(defaultVariant="x")}}
    with pytest.raises(FlagError) as caught:
        flags_from_flagd_document(json.dumps(document))
    assert caught.value.key is None
    assert any(p.startswith("a:") for p in caught.value.problems)
    assert any(p.startswith("b:") for p in caught.value.problems)
    assert Flag.from_flagd("f", flagd_flag()).help
    with pytest.raises(FlagError, match="JSON object"):
        Flag.from_flagd("f", ["not", "a", "mapping"])  # type: ignore[arg-type]
