"""The embedded MQTT broker (amqtt) that ``deployctl up`` runs in-process.

It listens on loopback unless told otherwise, and it refuses any other
address unless clients must log in with a password from a password file. With
a password file only amqtt's ``FileAuthPlugin`` is loaded: listing its
``AnonymousAuthPlugin`` beside it would let anonymous clients in.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from amqtt.broker import Broker
from amqtt.errors import BrokerError, PluginError

from communicator._errors import BackendError, ConfigError
from communicator.backends._hashing import password_hash
from communicator.backends._settings import Settings

logger = logging.getLogger(__name__)

_FILE_AUTH = "amqtt.plugins.authentication.FileAuthPlugin"
_ANONYMOUS_AUTH = "amqtt.plugins.authentication.AnonymousAuthPlugin"
# What amqtt's FileAuthPlugin verifies (with pwdlib): argon2, or legacy sha512-crypt.
_HASH_PREFIXES = ("$argon2", "$6$")


def write_password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write an amqtt password file: one ``user:argon2-hash`` line per user.

    The file is replaced atomically and readable by its owner only. Hashing
    (argon2id at the shared cost, ``_hashing.ARGON2_COST``) is deliberately
    slow, about 25 ms per user: from async code, call it through
    ``asyncio.to_thread``.

    Args:
        path: The file to (re)write.
        users: Password of each user name.

    Raises:
        ConfigError: A user name is empty or holds ``:`` or white space, or
            there are no users.
    """
    if not users:
        raise ConfigError("a password file needs at least one user: nobody could log in")
    # amqtt verifies a login on its event loop, which is ours: the shared cost is
    # kept low for it (about 25 ms a login), see communicator.backends._hashing.
    hasher = password_hash()
    lines = []
    for user, password in users.items():
        if not user or ":" in user or user.startswith("#") or any(c.isspace() for c in user):
            raise ConfigError(f"MQTT user name {user!r} must be non-empty, without ':' or spaces")
        lines.append(f"{user}:{hasher.hash(password)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp made it 0600
            file.writelines(lines)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _check_password_file(path: Path) -> None:
    """Refuse a password file amqtt would reject or that lets nobody in (blocking)."""
    fix = "write it with write_password_file(), or unset DEPLOYCTL_EMBEDDED_MQTT_PASSWORD_FILE"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the MQTT password file {path} ({exc}); {fix}") from exc
    users = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, hashed = line.partition(":")
        if not user or not colon or not hashed.startswith(_HASH_PREFIXES):
            raise ConfigError(
                f"{path}:{number}: not 'user:hash' with an argon2 or sha512-crypt hash; {fix}"
            )
        users += 1
    if not users:
        raise ConfigError(f"the MQTT password file {path} names no user; {fix}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class EmbeddedBroker:
    """An amqtt broker in this process: MQTT 3.1.1 over TCP.

    Args:
        host: Address to listen on; anything but loopback needs ``password_file``.
        port: TCP port to listen on.
        password_file: amqtt password file (see :func:`write_password_file`);
            when set, only its users get in, with their passwords.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 18830, password_file: Path | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._password_file = password_file
        self._broker: Broker | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedBroker:
        """Build one from the ``embedded_mqtt_*`` settings."""
        return cls(
            host=settings.embedded_mqtt_host,
            port=settings.embedded_mqtt_port,
            password_file=settings.embedded_mqtt_password_file,
        )

    @property
    def url(self) -> str:
        """The URL local clients connect to (``mqtt://host:port``)."""
        host = self._host
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return f"mqtt://{host}:{self._port}"
        if address.is_unspecified:
            host = "::1" if address.version == 6 else "127.0.0.1"
        return f"mqtt://[{host}]:{self._port}" if ":" in host else f"mqtt://{host}:{self._port}"

    def _config(self) -> dict[str, Any]:
        plugins: dict[str, dict[str, Any]]
        if self._password_file is None:
            plugins = {_ANONYMOUS_AUTH: {"allow_anonymous": True}}
        else:  # FileAuthPlugin alone: see the module docstring.
            plugins = {_FILE_AUTH: {"password_file": str(self._password_file)}}
        return {
            # amqtt splits "host:port" at the last colon: IPv6 goes without brackets.
            "listeners": {"default": {"type": "tcp", "bind": f"{self._host}:{self._port}"}},
            "plugins": plugins,
        }

    async def start(self) -> None:
        """Check the configuration, then listen.

        Raises:
            ConfigError: The address is not loopback and there is no password
                file, the password file is unusable, or the port is taken; all
                found before anything is bound where possible.
            BackendError: amqtt failed to start for another reason.
        """
        if self._broker is not None:
            raise RuntimeError("the embedded broker is already running")
        if self._password_file is None and not _is_loopback(self._host):
            raise ConfigError(
                f"the embedded MQTT broker would listen on {self._host}, reachable from other "
                "machines, without passwords; set DEPLOYCTL_EMBEDDED_MQTT_PASSWORD_FILE (see "
                "write_password_file) or DEPLOYCTL_EMBEDDED_MQTT_HOST=127.0.0.1"
            )
        if self._password_file is not None:
            await asyncio.to_thread(_check_password_file, self._password_file)
        try:
            broker = Broker(self._config())
            await broker.start()
        except (BrokerError, PluginError) as exc:
            raise self._start_error(exc) from exc
        self._broker = broker
        auth = "password file" if self._password_file else "anonymous, loopback only"
        logger.info("embedded MQTT broker listens at %s (%s)", self.url, auth)

    def _start_error(self, exc: BaseException) -> ConfigError | BackendError:
        cause = exc.__cause__
        code = cause.errno if isinstance(cause, OSError) else None
        if code in (errno.EADDRINUSE, errno.EACCES):
            what = "is already in use" if code == errno.EADDRINUSE else "needs privileges"
            return ConfigError(
                f"port {self._port} on {self._host} {what} for the embedded MQTT broker; "
                "set DEPLOYCTL_EMBEDDED_MQTT_PORT to a free port (or stop what holds it)"
            )
        if code == errno.EADDRNOTAVAIL:
            return ConfigError(
                f"{self._host} is not an address of this machine; "
                "fix DEPLOYCTL_EMBEDDED_MQTT_HOST (127.0.0.1 for local use)"
            )
        return BackendError(
            f"the embedded MQTT broker failed to start ({exc}); check the embedded_mqtt_* "
            "settings, or set DEPLOYCTL_MQTT_URL to use another broker",
            backend="mqtt",
            url=self.url,
        )

    async def stop(self) -> None:
        """Disconnect every client and stop listening."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
