"""Service passwords: scrypt hashes in Redis, constant-time checks, throttled guessing.

A service's password is stored only as a self-describing scrypt hash
(``scrypt$n=16384,r=8,p=1$<salt>$<key>``, base64 without padding), so its cost
can rise later without breaking stored hashes. Hashing takes tens of
milliseconds on purpose: it runs in a thread, never on the event loop.

Bad passwords are counted per source and per service in a window; past a limit
the source (or the whole service) is throttled for a while, every check then
answers ``throttled`` without hashing anything, and one ``bad_passwords``
event is published when throttling starts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis

from communicator._errors import RegistryError
from communicator.backends._keys import Keys
from communicator.registry._lua import Scripts
from communicator.registry._outcomes import check_names

#: scrypt cost: n=2**14, r=8 takes 16 MiB and about 40 ms on one core (2026 VMs).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
_SCHEME = "scrypt"
#: A stored hash asking for more memory than this is refused, not computed.
_MAX_MEMORY = 256 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY, dklen=_KEY_BYTES
    )


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Hash a password with scrypt and a random salt, as ``scrypt$n=..,r=..,p=..$salt$key``.

    CPU-heavy (about 40 ms with the default cost): in async code, call it in a
    thread (``asyncio.to_thread``).

    Raises:
        RegistryError: The password is empty.
    """
    if not password:
        raise RegistryError("a password cannot be empty: choose one of 16 characters or more")
    salt = os.urandom(_SALT_BYTES)
    key = _derive(password, salt, n, r, p)
    return f"{_SCHEME}$n={n},r={r},p={p}${_b64(salt)}${_b64(key)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, params, salt_text, key_text = stored.split("$")
    if scheme != _SCHEME:
        raise ValueError(f"scheme {scheme!r} is not {_SCHEME!r}")
    cost = dict(item.split("=", 1) for item in params.split(","))
    key = _unb64(key_text)
    if not key:
        raise ValueError("no key")
    return int(cost["n"]), int(cost["r"]), int(cost["p"]), _unb64(salt_text), key


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash from :func:`hash_password`, compared in constant time.

    CPU-heavy, as :func:`hash_password`.

    Raises:
        RegistryError: ``stored`` is not such a hash.
    """
    try:
        n, r, p, salt, key = _parse(stored)
        computed = hashlib.scrypt(
            password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY, dklen=len(key)
        )
    except (ValueError, KeyError, binascii.Error) as exc:
        raise RegistryError(
            f"stored password hash is unreadable ({exc}); set the password again"
        ) from exc
    return hmac.compare_digest(computed, key)


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
        scrypt_n: scrypt's cost for new hashes (a power of 2); stored hashes keep theirs.
        event_history: About how many events the events stream keeps.
    """

    def __init__(
        self,
        *,
        redis: Redis,
        keys: Keys,
        throttle: ThrottlePolicy | None = None,
        scrypt_n: int = SCRYPT_N,
        event_history: int = 10_000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._throttle = throttle or ThrottlePolicy()
        self._scrypt_n = scrypt_n
        self._event_history = event_history
        self._scripts = Scripts(redis, ("bad_password",))

    async def set_password(self, service: str, password: str) -> None:
        """Set or rotate a service's password: the old one stops working at once."""
        check_names(service)
        stored = await asyncio.to_thread(hash_password, password, n=self._scrypt_n)
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
        counts as a bad one even where none is required.
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
        if await asyncio.to_thread(verify_password, password, stored_text):
            await self._redis.delete(k.auth_failures_by_source(source))
            return AuthResult(AuthStatus.OK)
        return await self._bad_password(service, source)

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
