"""Service passwords: argon2 hashes in Redis, constant-time checks, throttled guessing.

A service's password is stored only as a self-describing hash of pwdlib's
argon2id (``$argon2id$v=19$m=19456,t=2,p=1$<salt>$<digest>``), the project's
one scheme (``communicator.backends._hashing``; the embedded broker's password
file uses it too), so its cost can rise later without breaking stored hashes.
Hashing takes about 25 ms on purpose: it runs in a thread, never on the event
loop.

Hashes of the former scheme, scrypt (``scrypt$n=16384,r=8,p=1$<salt>$<key>``,
base64 without padding), still verify, and the first successful check replaces
one with an argon2 hash, unless the password changed meanwhile (WATCH). Nothing
creates scrypt hashes any more.

Bad passwords are counted per source and per service in a window; past a limit
the source (or the whole service) is throttled for a while, every check then
answers ``throttled`` without hashing anything, and one ``bad_passwords``
event is published when throttling starts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers import HasherProtocol
from pwdlib.hashers.base import ensure_bytes, ensure_str, validate_str_or_bytes
from redis.asyncio import Redis
from redis.exceptions import WatchError

from communicator._errors import RegistryError
from communicator.backends._hashing import (
    ARGON2_COST,
    MAX_MEMORY_KIB,
    Argon2Cost,
    UnreadableHashError,
    password_hash,
)
from communicator.backends._keys import Keys
from communicator.registry._lua import Scripts
from communicator.registry._outcomes import check_names

_SCRYPT_PREFIX = "scrypt$"


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _parse_scrypt(stored: str) -> tuple[int, int, int, bytes, bytes]:
    _, params, salt_text, key_text = stored.split("$")
    cost = dict(item.split("=", 1) for item in params.split(","))
    key = _unb64(key_text)
    if not key:
        raise ValueError("no key")
    return int(cost["n"]), int(cost["r"]), int(cost["p"]), _unb64(salt_text), key


class LegacyScryptHasher(HasherProtocol):
    """A pwdlib hasher that verifies the former ``scrypt$n=..,r=..,p=..$salt$key`` hashes.

    It creates none: behind the argon2 hasher in a :class:`pwdlib.PasswordHash`,
    its hashes still verify and ``verify_and_update`` replaces them with argon2.
    """

    @classmethod
    def identify(cls, hash: str | bytes) -> bool:
        """Whether ``hash`` is of the scrypt scheme (readable or not)."""
        validate_str_or_bytes(hash, "hash")
        return ensure_bytes(hash).startswith(_SCRYPT_PREFIX.encode())

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        """Refuse: nothing creates scrypt hashes any more.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError("scrypt hashes are only verified now: hash with argon2")

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        """Whether ``password`` matches ``hash``, compared in constant time.

        Raises:
            UnreadableHashError: ``hash`` is corrupt or asks for too much memory.
        """
        secret = ensure_bytes(password)
        try:
            n, r, p, salt, key = _parse_scrypt(ensure_str(hash))
            computed = hashlib.scrypt(
                secret,
                salt=salt,
                n=n,
                r=r,
                p=p,
                maxmem=MAX_MEMORY_KIB * 1024,
                dklen=len(key),
            )
        except (ValueError, KeyError, binascii.Error) as exc:
            raise UnreadableHashError(str(exc)) from exc
        return hmac.compare_digest(computed, key)

    def check_needs_rehash(self, hash: str | bytes) -> bool:
        """Always: every scrypt hash is to be replaced."""
        return True


@functools.cache
def _hasher(cost: Argon2Cost) -> PasswordHash:
    return password_hash(LegacyScryptHasher(), cost=cost)


def _unreadable(exc: Exception) -> RegistryError:
    return RegistryError(f"stored password hash is unreadable ({exc}); set the password again")


def hash_password(password: str, *, cost: Argon2Cost = ARGON2_COST) -> str:
    """Hash a password with argon2id and a random salt, as ``$argon2id$v=19$m=..,t=..,p=..$..``.

    CPU-heavy (about 25 ms with the default cost): in async code, call it in a
    thread (``asyncio.to_thread``).

    Args:
        password: The password.
        cost: The hash's cost; the default is shared with the broker's password file.

    Raises:
        RegistryError: The password is empty.
    """
    if not password:
        raise RegistryError("a password cannot be empty: choose one of 16 characters or more")
    return _hasher(cost).hash(password)


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a stored hash (argon2, or legacy scrypt), in constant time.

    CPU-heavy, as :func:`hash_password`.

    Raises:
        RegistryError: ``stored`` is not such a hash.
    """
    try:
        return _hasher(ARGON2_COST).verify(password, stored)
    except (UnknownHashError, UnreadableHashError) as exc:
        raise _unreadable(exc) from exc


def _verify_and_update(password: str, stored: str, cost: Argon2Cost) -> tuple[bool, str | None]:
    """:func:`verify_password`, and the hash to store instead if ``stored`` is outdated."""
    try:
        return _hasher(cost).verify_and_update(password, stored)
    except (UnknownHashError, UnreadableHashError) as exc:
        raise _unreadable(exc) from exc


class AuthStatus(StrEnum):
    """The outcome of a password check; its value is the REFUSE ``reason``."""

    # S105: these are REFUSE reasons, not passwords.
    OK = "ok"
    BAD_PASSWORD = "bad_password"  # noqa: S105
    PASSWORD_REQUIRED = "password_required"  # noqa: S105
    NO_PASSWORD_SET = "no_password_set"  # noqa: S105
    THROTTLED = "throttled"


_MESSAGES = {
    AuthStatus.OK: "",
    AuthStatus.BAD_PASSWORD: "wrong password for this service; check the instance's configuration",
    AuthStatus.PASSWORD_REQUIRED: "this service needs a password: send password= in REGISTER",
    AuthStatus.NO_PASSWORD_SET: (
        "this service needs a password but none is set: an operator must set one first"
    ),
    AuthStatus.THROTTLED: "too many bad passwords: wait retry_after seconds before trying again",
}


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of :meth:`PasswordStore.check`.

    Attributes:
        status: What the check found.
        retry_after: Seconds until the source may try again, when throttled.
    """

    status: AuthStatus
    retry_after: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the instance may register."""
        return self.status is AuthStatus.OK

    @property
    def reason(self) -> str:
        """The REFUSE ``reason`` (the status' value)."""
        return self.status.value

    @property
    def message(self) -> str:
        """What the refused instance, or its operator, should do."""
        return _MESSAGES[self.status]


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """When bad passwords start to be throttled.

    Attributes:
        window_seconds: How long a bad password counts.
        per_source: Bad passwords from one source in the window that throttle it.
        per_service: Bad passwords for one service, from any source, that throttle
            the service. Higher: it also holds back the service's good instances.
        block_seconds: How long throttling lasts.
    """

    window_seconds: int = 60
    per_source: int = 5
    per_service: int = 50
    block_seconds: float = 60.0


class PasswordStore:
    """Services' passwords in Redis, checked with throttling.

    Args:
        redis: A client made with ``protocol=2``.
        keys: The key space.
        throttle: When to throttle bad passwords.
        argon2_cost: The cost of new hashes (tests lower it); a stored hash of
            another cost, or a legacy scrypt one, is re-hashed at this cost on
            its next successful check.
        event_history: About how many events the events stream keeps.
    """

    def __init__(
        self,
        *,
        redis: Redis,
        keys: Keys,
        throttle: ThrottlePolicy | None = None,
        argon2_cost: Argon2Cost = ARGON2_COST,
        event_history: int = 10_000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._throttle = throttle or ThrottlePolicy()
        self._argon2_cost = argon2_cost
        self._event_history = event_history
        self._scripts = Scripts(redis, ("bad_password",))

    async def set_password(self, service: str, password: str) -> None:
        """Set or rotate a service's password: the old one stops working at once."""
        check_names(service)
        stored = await asyncio.to_thread(hash_password, password, cost=self._argon2_cost)
        await self._redis.set(self._keys.service_password(service), stored)

    async def delete_password(self, service: str) -> None:
        """Remove a service's password (it then needs none where none is required)."""
        await self._redis.delete(self._keys.service_password(service))

    async def has_password(self, service: str) -> bool:
        """Whether a service has a password set."""
        return bool(await self._redis.exists(self._keys.service_password(service)))

    async def check(
        self, service: str, password: str | None, *, source: str, required: bool = False
    ) -> AuthResult:
        """Check a password given at REGISTER by ``source`` (a client id or an address).

        A service with a password set needs it whenever ``required`` (a remote
        connection, or a service defined as needing one); a wrong password given
        counts as a bad one even where none is required. A good password whose
        hash is outdated (legacy scrypt, or another cost) gets it re-hashed.
        """
        k = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.pttl(k.auth_block_by_source(source))
            pipe.pttl(k.auth_block_by_service(service))
            pipe.get(k.service_password(service))
            source_ttl, service_ttl, stored = await pipe.execute()
        blocked_ms = max(source_ttl, service_ttl)
        if blocked_ms > 0:
            # No hashing while throttled: guessing costs the guesser, not us.
            return AuthResult(AuthStatus.THROTTLED, blocked_ms / 1000)
        if stored is None:
            return AuthResult(AuthStatus.NO_PASSWORD_SET if required else AuthStatus.OK)
        if not password:
            return AuthResult(AuthStatus.PASSWORD_REQUIRED if required else AuthStatus.OK)
        stored_text = stored.decode() if isinstance(stored, bytes) else stored
        ok, updated = await asyncio.to_thread(
            _verify_and_update, password, stored_text, self._argon2_cost
        )
        if not ok:
            return await self._bad_password(service, source)
        await self._redis.delete(k.auth_failures_by_source(source))
        if updated is not None:
            await self._replace_hash(service, stored_text, updated)
        return AuthResult(AuthStatus.OK)

    async def _replace_hash(self, service: str, old: str, new: str) -> None:
        """Store hash ``new`` instead of ``old``, unless the password changed meanwhile.

        WATCH makes it a compare-and-set: a rotation or deletion after the
        check, even between GET and EXEC, wins and the new hash is dropped.
        """
        key = self._keys.service_password(service)
        async with self._redis.pipeline(transaction=True) as pipe:
            with contextlib.suppress(WatchError):  # changed between GET and EXEC
                await pipe.watch(key)
                current = await pipe.get(key)
                if current is None or ensure_str(current) != old:
                    return  # rotated or deleted since the check
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(key, new, keepttl=True)
                await pipe.execute()

    async def _bad_password(self, service: str, source: str) -> AuthResult:
        k, throttle = self._keys, self._throttle
        retry_ms = await self._scripts.run(
            "bad_password",
            [
                k.auth_failures_by_source(source),
                k.auth_failures_by_service(service),
                k.auth_block_by_source(source),
                k.auth_block_by_service(service),
                k.events_stream(),
            ],
            [
                service,
                source,
                throttle.window_seconds,
                throttle.per_source,
                throttle.per_service,
                int(throttle.block_seconds * 1000),
                self._event_history,
                k.events(),
            ],
        )
        if retry_ms > 0:
            return AuthResult(AuthStatus.THROTTLED, retry_ms / 1000)
        return AuthResult(AuthStatus.BAD_PASSWORD)
