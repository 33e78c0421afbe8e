"""The feature flag model, in flagd's shape, and its flagd JSON import and export.

A :class:`Flag` is flagd's flag definition (``state``, ``variants``,
``defaultVariant``, ``targeting``, ``metadata``) plus what deployctl requires of
every flag: ``help`` (what the flag does and what to do when it misbehaves) and
``help_uri``, and optionally ``owner``, ``tags`` and ``expires``. flagd refuses
unknown properties on a flag, so in flagd JSON those travel in the flag's
``metadata``; :meth:`Flag.from_flagd` and :meth:`Flag.to_flagd` move them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flags._errors import FlagError

FLAGD_SCHEMA = "https://flagd.dev/schema/v0/flags.json"
"""The ``$schema`` of the flagd documents :func:`flagd_document` writes."""

_OUR_METADATA = ("help", "help_uri", "owner", "tags", "expires")
_IGNORED_FLAGD_KEYS = ("source", "selector")  # flagd's own sync bookkeeping, dropped as flagd does

MetadataValue = str | int | float | bool


class FlagState(StrEnum):
    """Whether a flag is evaluated (``ENABLED``) or always yields the caller's default."""

    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


def variant_kind(value: object) -> str:
    """Name the flagd type of a variant value: boolean, string, number or object."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict | list):
        return "object"
    raise ValueError(f"variant value {value!r} is not a boolean, string, number or object")


def _parse_expires(value: object) -> object:
    if isinstance(value, str):
        if len(value) == len("2027-03-31"):
            return date.fromisoformat(value)
        return datetime.fromisoformat(value)
    return value


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class Flag(BaseModel):
    """A feature flag: flagd's definition plus the help every deployctl flag carries.

    Attributes:
        key: The flag's key, as callers name it when they evaluate.
        state: ``DISABLED`` flags always resolve to the caller's default value.
        variants: Variant name to value; all values of one type (boolean, string,
            number or object).
        default_variant: The variant served without targeting, or when targeting
            returns null; ``None`` to serve the caller's default value.
        targeting: A JsonLogic rule (with flagd's operators) returning a variant name.
        metadata: flagd flag metadata (other than the fields below).
        help: What the flag does, and what to do when it misbehaves.
        help_uri: An absolute http(s) URL with more about the flag.
        owner: Who to ask about the flag.
        tags: Free labels, for searching.
        expires: When the flag should be gone: after this date (or moment) it is stale.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    key: str = Field(min_length=1)
    state: FlagState = FlagState.ENABLED
    variants: dict[str, Any] = Field(min_length=1)
    default_variant: str | None = Field(default=None, alias="defaultVariant")
    targeting: dict[str, Any] | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    help: str
    help_uri: str
    owner: str | None = None
    tags: tuple[str, ...] = ()
    expires: date | datetime | None = None

    @field_validator("default_variant", mode="before")
    @classmethod
    def _boolean_variant_name(cls, value: object) -> object:
        # flagd accepts `"defaultVariant": true` for a variant named "true".
        return str(value).lower() if isinstance(value, bool) else value

    @field_validator("variants")
    @classmethod
    def _variants_of_one_type(cls, variants: dict[str, Any]) -> dict[str, Any]:
        kinds = {name: variant_kind(value) for name, value in variants.items()}
        if "" in variants:
            raise ValueError("a variant name must not be empty")
        if len(set(kinds.values())) > 1:
            listed = ", ".join(f"{name}: {kind}" for name, kind in kinds.items())
            raise ValueError(f"all variants must have one type, found {listed}")
        return variants

    @field_validator("help")
    @classmethod
    def _help_says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("help must say what the flag does and what to do when it misbehaves")
        return value

    @field_validator("help_uri")
    @classmethod
    def _absolute_http_uri(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"help_uri must be an absolute http(s) URL, not {value!r}")
        return value

    @field_validator("metadata")
    @classmethod
    def _no_reserved_metadata(cls, value: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
        clashes = sorted(set(value) & set(_OUR_METADATA))
        if clashes:
            raise ValueError(f"{', '.join(clashes)} are fields of the flag, not metadata")
        if "" in value:
            raise ValueError("a metadata key must not be empty")
        return value

    @field_validator("tags")
    @classmethod
    def _plain_tags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tag in value:
            if not tag.strip() or "," in tag:
                raise ValueError(f"tag {tag!r} must be non-empty and without commas")
        return value

    @field_validator("expires", mode="before")
    @classmethod
    def _iso_expires(cls, value: object) -> object:
        return _parse_expires(value)

    @model_validator(mode="after")
    def _default_is_a_variant(self) -> Flag:
        if self.default_variant is not None and self.default_variant not in self.variants:
            raise ValueError(
                f"defaultVariant {self.default_variant!r} is not one of the variants "
                f"{sorted(self.variants)}"
            )
        return self

    @property
    def kind(self) -> str:
        """The flagd type of the flag's values: boolean, string, number or object."""
        return variant_kind(next(iter(self.variants.values())))

    def is_stale(self, now: datetime) -> bool:
        """Tell whether the flag has outlived its ``expires`` at ``now`` (naive means UTC)."""
        if self.expires is None:
            return False
        if isinstance(self.expires, datetime):
            return _as_utc(now) > _as_utc(self.expires)
        return _as_utc(now).date() > self.expires

    def flagd_metadata(self) -> dict[str, MetadataValue]:
        """The flag's metadata as flagd carries it, with help, help_uri and the rest."""
        metadata: dict[str, MetadataValue] = dict(self.metadata)
        metadata["help"] = self.help
        metadata["help_uri"] = self.help_uri
        if self.owner is not None:
            metadata["owner"] = self.owner
        if self.tags:
            metadata["tags"] = ",".join(self.tags)
        if self.expires is not None:
            metadata["expires"] = self.expires.isoformat()
        return metadata

    def to_flagd(self) -> dict[str, Any]:
        """The flag as a flagd flag definition (the value under its key in ``flags``)."""
        data: dict[str, Any] = {"state": self.state.value, "variants": self.variants}
        if self.default_variant is not None:
            data["defaultVariant"] = self.default_variant
        if self.targeting is not None:
            data["targeting"] = self.targeting
        data["metadata"] = self.flagd_metadata()
        return data

    @classmethod
    def from_flagd(cls, key: str, data: Mapping[str, Any]) -> Flag:
        """Build a flag from a flagd flag definition, help and the rest read from metadata.

        Raises:
            FlagError: The definition is invalid; the message lists every problem.
        """
        if not isinstance(data, Mapping):
            raise FlagError(key, [f"a flag definition is a JSON object, not {data!r}"])
        fields = {name: value for name, value in data.items() if name not in _IGNORED_FLAGD_KEYS}
        metadata = fields.pop("metadata", None) or {}
        if not isinstance(metadata, Mapping):
            raise FlagError(key, [f"metadata must be a JSON object, not {metadata!r}"])
        metadata = dict(metadata)
        for name in _OUR_METADATA:
            if name in metadata:
                fields[name] = metadata.pop(name)
        if isinstance(fields.get("tags"), str):
            fields["tags"] = tuple(t.strip() for t in fields["tags"].split(",") if t.strip())
        if fields.get("defaultVariant") == "":
            fields["defaultVariant"] = None  # flagd reads an empty name as "no default"
        try:
            return cls.model_validate({**fields, "key": key, "metadata": metadata})
        except ValidationError as error:
            raise FlagError(key, _problems(error)) from None


def _problems(error: ValidationError) -> list[str]:
    problems = []
    for detail in error.errors():
        where = ".".join(str(part) for part in detail["loc"])
        if detail["type"] == "missing" and where in ("help", "help_uri"):
            problems.append(f"`{where}` is missing (in flagd JSON, put it in the flag's metadata)")
        elif detail["type"] == "extra_forbidden":
            problems.append(f"`{where}` is not a flag property (extra data goes in metadata)")
        else:
            problems.append(f"{where or 'flag'}: {detail['msg']}")
    return problems


def resolve_evaluators(
    rule: Any, evaluators: Mapping[str, Any], _seen: tuple[str, ...] = ()
) -> Any:
    """Replace every ``{"$ref": name}`` in a rule by the named shared evaluator.

    Raises:
        ValueError: A reference names no evaluator, or evaluators refer to each other in a loop.
    """
    if isinstance(rule, list):
        return [resolve_evaluators(item, evaluators, _seen) for item in rule]
    if not isinstance(rule, dict):
        return rule
    if len(rule) == 1 and isinstance(rule.get("$ref"), str):
        name = rule["$ref"]
        if name not in evaluators:
            raise ValueError(f"$ref {name!r} names no evaluator in $evaluators")
        if name in _seen:
            raise ValueError(f"$evaluators refer to each other in a loop: {' -> '.join(_seen)}")
        return resolve_evaluators(evaluators[name], evaluators, (*_seen, name))
    return {name: resolve_evaluators(value, evaluators, _seen) for name, value in rule.items()}


def flags_from_flagd_document(json_text: str | bytes) -> dict[str, Flag]:
    """Read the flags of a flagd flag document, shared ``$evaluators`` resolved.

    The document's own ``metadata`` is merged under each flag's, as flagd does when
    it reports metadata (so a document can give every flag the same ``owner``).

    Raises:
        FlagError: The document or some of its flags are invalid.
    """
    try:
        document = json.loads(json_text)
    except json.JSONDecodeError as error:
        raise FlagError(None, [f"not JSON: {error}"]) from None
    if not isinstance(document, dict) or not isinstance(document.get("flags"), dict):
        raise FlagError(None, ['a flagd document is a JSON object with a "flags" object'])
    evaluators = document.get("$evaluators", {})
    shared = document.get("metadata", {})
    if not isinstance(evaluators, dict) or not isinstance(shared, dict):
        raise FlagError(None, ['"$evaluators" and "metadata" must be JSON objects'])
    flags: dict[str, Flag] = {}
    problems: list[str] = []
    for key, data in document["flags"].items():
        try:
            if isinstance(data, dict):
                data = {**data, "metadata": {**shared, **(data.get("metadata") or {})}}
                if "targeting" in data:
                    data["targeting"] = resolve_evaluators(data["targeting"], evaluators)
            flags[key] = Flag.from_flagd(key, data)
        except FlagError as error:
            problems.extend(f"{key}: {problem}" for problem in error.problems)
        except ValueError as error:
            problems.append(f"{key}: targeting: {error}")
    if problems:
        raise FlagError(None, problems)
    return flags


def flagd_document(flags: Mapping[str, Flag] | Iterable[Flag]) -> str:
    """Write flags as a flagd flag document (JSON text), keyed by each flag's key."""
    chosen = flags.values() if isinstance(flags, Mapping) else flags
    document = {"$schema": FLAGD_SCHEMA, "flags": {flag.key: flag.to_flagd() for flag in chosen}}
    return json.dumps(document, indent=2, ensure_ascii=False)
