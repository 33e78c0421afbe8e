"""flagd's custom targeting operators: ``fractional``, ``starts_with``, ``ends_with``, ``sem_ver``.

``fractional`` buckets a context as flagd does: the bucketing value (by default
``[flagKey, targetingKey]``) is encoded as canonical CBOR, hashed with 32-bit
MurmurHash3 (unsigned), and ``(hash * total_weight) >> 32`` picks the bucket.
The CBOR encoding is written here (cbor2 costs microseconds a call); tests check
it byte for byte against cbor2's canonical output.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import mmh3
import semver

MAX_WEIGHT_SUM = 2_147_483_647
"""flagd refuses fractional weights summing over MaxInt32."""

_BIG = 2**64


def _head(major: int, length: int) -> bytes:
    major <<= 5
    if length < 24:
        return bytes((major | length,))
    if length < 256:
        return bytes((major | 24, length))
    if length < 65536:
        return struct.pack(">BH", major | 25, length)
    if length < 4294967296:
        return struct.pack(">BL", major | 26, length)
    return struct.pack(">BQ", major | 27, length)


def cbor_text(text: str) -> bytes:
    """Encode a string as a CBOR text string.

    Raises:
        UnicodeEncodeError: The string holds lone surrogates.
    """
    encoded = text.encode("utf-8")
    return _head(3, len(encoded)) + encoded


def _cbor_float(value: float) -> bytes:
    if math.isnan(value):
        return b"\xf9\x7e\x00"
    if math.isinf(value):
        return b"\xf9\x7c\x00" if value > 0 else b"\xf9\xfc\x00"
    encoded = struct.pack(">Bd", 0xFB, value)
    for layout, tag in ((">Bf", 0xFA), (">Be", 0xF9)):
        try:
            shorter = struct.pack(layout, tag, value)
        except OverflowError:
            break
        if struct.unpack(layout, shorter)[1] != value:
            break
        encoded = shorter
    return encoded


def _cbor_int(value: int) -> bytes:
    if value >= _BIG or value < -_BIG:
        tag, magnitude = (2, value) if value >= 0 else (3, -value - 1)
        payload = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
        return _head(6, tag) + _head(2, len(payload)) + payload
    return _head(0, value) if value >= 0 else _head(1, -(value + 1))


def canonical_cbor(value: Any) -> bytes:
    """Encode a JSON value as canonical CBOR, integral floats as integers (as flagd does).

    Raises:
        TypeError: The value is not a JSON value.
        UnicodeEncodeError: A string holds lone surrogates.
    """
    if isinstance(value, str):
        return cbor_text(value)
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return _cbor_int(value)
    if isinstance(value, float):
        if value.is_integer() and -(2**63) <= value <= 2**64 - 1:
            return _cbor_int(int(value))
        return _cbor_float(value)
    if isinstance(value, list | tuple):
        return _head(4, len(value)) + b"".join(canonical_cbor(item) for item in value)
    if isinstance(value, dict):
        items = sorted(
            (len(key), key, canonical_cbor(item))
            for key, item in ((canonical_cbor(k), v) for k, v in value.items())
        )
        return _head(5, len(items)) + b"".join(key + item for _, key, item in items)
    raise TypeError(f"cannot bucket by a {type(value).__name__}")


def bucket_hash(encoded: bytes) -> int:
    """The unsigned 32-bit MurmurHash3 flagd buckets by."""
    return mmh3.hash(encoded, signed=False)


def parse_fractions(specs: tuple[Any, ...]) -> tuple[list[Any], list[int]] | None:
    """Read ``[variant, weight]`` pairs into variants and cumulative bucket ends.

    Returns:
        The variants and the end (exclusive) of each one's range of buckets, or
        ``None`` when flagd would refuse the specs (bad shape, non-integer weight,
        total weight not positive or over MaxInt32).
    """
    variants: list[Any] = []
    ends: list[int] = []
    total = 0
    for spec in specs:
        if not isinstance(spec, list | tuple) or not spec or len(spec) > 2:
            return None
        weight = 1
        if len(spec) == 2:
            if isinstance(spec[1], bool) or not isinstance(spec[1], int):
                return None
            weight = max(0, spec[1])  # negative weights come from rollout arithmetic
        total += weight
        variants.append(spec[0])
        ends.append(total)
    if total > MAX_WEIGHT_SUM or total <= 0:
        return None
    return variants, ends


def pick(hash_value: int, variants: list[Any], ends: list[int]) -> Any:
    """The variant whose range holds the hash's bucket."""
    bucket = (hash_value * ends[-1]) >> 32
    for variant, end in zip(variants, ends, strict=True):
        if bucket < end:
            return variant
    return None


def fractional(data: Any, flag_key: str | None, *args: Any) -> Any:
    """Flagd's ``fractional`` on evaluated arguments.

    Args:
        data: The data in scope.
        flag_key: The flag's key when known at compile time; ``None`` to read
            ``$flagd.flagKey`` from the data, as flagd does.
        *args: An optional bucketing value, then ``[variant, weight]`` pairs.

    Returns:
        The chosen variant, or ``None`` where flagd returns null.
    """
    if not args:
        return None
    if isinstance(args[0], list | tuple):
        targeting_key = data.get("targetingKey")
        if not isinstance(targeting_key, str) or not targeting_key:
            return None
        if flag_key is None:
            flag_key = data.get("$flagd", {}).get("flagKey", "")
        bucket_by: Any = [flag_key, targeting_key]
    else:
        bucket_by, args = args[0], args[1:]
        if bucket_by is None:
            return None
    try:
        encoded = canonical_cbor(bucket_by)
    except (TypeError, UnicodeEncodeError):
        return None
    parsed = parse_fractions(args)
    if parsed is None:
        return None
    return pick(bucket_hash(encoded), *parsed)


def starts_with(data: Any, *args: Any) -> bool | None:
    """Flagd's ``starts_with``: null unless given exactly two strings."""
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
        return None
    return args[0].startswith(args[1])


def ends_with(data: Any, *args: Any) -> bool | None:
    """Flagd's ``ends_with``: null unless given exactly two strings."""
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
        return None
    return args[0].endswith(args[1])


def normalize_version(value: Any) -> semver.Version:
    """Parse a version as flagd does: a leading ``v`` dropped, ``1`` and ``1.2`` padded.

    Raises:
        ValueError: Not a semantic version.
    """
    version = str(value)
    if version.startswith(("v", "V")):
        version = version[1:]
    numeric = version.split("-")[0].split("+")[0]
    dots = numeric.count(".")
    if dots < 2:
        version = numeric + ".0" * (2 - dots) + version[len(numeric) :]
    return semver.Version.parse(version)


_SEMVER_TESTS = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "^": lambda a, b: a.major == b.major,
    "~": lambda a, b: a.major == b.major and a.minor == b.minor,
}


def sem_ver(data: Any, *args: Any) -> bool | None:
    """Flagd's ``sem_ver``: compare two versions with ``= != < <= > >= ^ ~``; null if invalid."""
    if len(args) != 3:
        return None
    try:
        left, right = normalize_version(args[0]), normalize_version(args[2])
    except ValueError:
        return None
    test = _SEMVER_TESTS.get(args[1]) if isinstance(args[1], str) else None
    return None if test is None else bool(test(left, right))
