"""The one password-hashing scheme: pwdlib's argon2id, with its cost chosen here.

Service passwords in Redis (``communicator.registry``) and the embedded
broker's password file (:mod:`._broker`) are both hashed by
:func:`password_hash`, so both follow :data:`ARGON2_COST`. A hash carries its
own cost (``$argon2id$v=19$m=19456,t=2,p=1$<salt>$<digest>``): raising the
cost later keeps stored hashes valid (the registry re-hashes a service's at
the new cost on its next successful check; a password file, when rewritten).

Why this cost: amqtt verifies a login on its event loop, which is ours. With
argon2-cffi's defaults (64 MiB, 3 passes) each check takes about 120 ms on one
core here (2026 VM), stalling everything meanwhile; OWASP's minimum for
argon2id (19 MiB, 2 passes, 1 lane) takes about 25 ms to hash or verify
(``time.perf_counter``, 15 runs, median). The registry hashes in a thread,
never on the event loop, at the same cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pwdlib import PasswordHash
from pwdlib.hashers import HasherProtocol
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.base import ensure_str, validate_str_or_bytes

from communicator._errors import DeployctlError

#: A stored hash asking for more memory than this is refused, not computed.
MAX_MEMORY_KIB = 256 * 1024


@dataclass(frozen=True, slots=True)
class Argon2Cost:
    """The cost of an argon2id hash.

    Attributes:
        memory_kib: Memory used, in KiB.
        passes: Passes over that memory (argon2's ``time_cost``).
        lanes: Parallel lanes (argon2's ``parallelism``; it changes the hash).
    """

    memory_kib: int = 19 * 1024
    passes: int = 2
    lanes: int = 1


#: The cost of every new hash (see the module docstring): about 25 ms.
ARGON2_COST = Argon2Cost()


class UnreadableHashError(DeployctlError, ValueError):
    """A stored hash is corrupt, or asks for too much, so nothing can match it.

    Its user says what to do: the registry turns it into a ``RegistryError``.
    """


class StrictArgon2Hasher(Argon2Hasher):
    """pwdlib's argon2 hasher, but an unreadable hash raises instead of not matching.

    pwdlib answers ``False`` for a corrupt hash, which would count every login
    as a bad password; this one raises :class:`UnreadableHashError`, so the
    operator learns the hash must be set again.

    Args:
        cost: The cost of new hashes; verification takes it from the hash.
    """

    def __init__(self, cost: Argon2Cost = ARGON2_COST) -> None:
        super().__init__(time_cost=cost.passes, memory_cost=cost.memory_kib, parallelism=cost.lanes)
        # Verification reads the cost from the hash, not from the hasher.
        self._verifier = argon2.PasswordHasher()

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        """Whether ``password`` matches ``hash``, compared in constant time (by libargon2).

        Raises:
            UnreadableHashError: ``hash`` is corrupt or asks for too much memory.
        """
        validate_str_or_bytes(password, "password")
        validate_str_or_bytes(hash, "hash")
        text = ensure_str(hash)
        try:
            memory_kib = argon2.extract_parameters(text).memory_cost
            if memory_kib > MAX_MEMORY_KIB:
                raise UnreadableHashError(f"it asks for {memory_kib} KiB of memory")
            return self._verifier.verify(text, password)
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError) as exc:
            raise UnreadableHashError(str(exc) or "malformed argon2 hash") from exc


def password_hash(*legacy: HasherProtocol, cost: Argon2Cost = ARGON2_COST) -> PasswordHash:
    """A :class:`pwdlib.PasswordHash` that hashes with argon2id at ``cost``.

    Args:
        *legacy: Hashers of older schemes it still verifies; a hash of theirs is
            re-hashed with argon2 by ``verify_and_update``.
        cost: The cost of new hashes (tests lower it).
    """
    return PasswordHash((StrictArgon2Hasher(cost), *legacy))
