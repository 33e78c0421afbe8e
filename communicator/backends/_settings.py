"""The one settings model of deployctl.

Every value comes, in this order of priority, from the command line (keyword
arguments to :class:`Settings`), the environment (``DEPLOYCTL_*``), a TOML
config file, then the defaults. With nothing set, the embedded backends are
used: ``redis_url`` and ``mqtt_url`` stay ``None``.

The config file is ``$DEPLOYCTL_CONFIG`` when set, else ``./deployctl.toml``,
else ``~/.config/deployctl/config.toml``; its keys are the field names below.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import redis.connection
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from communicator._errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
_MQTT_SCHEMES = {"mqtt": 1883, "mqtts": 8883}


def masked(url: str) -> str:
    """Return ``url`` with its password, if any, replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    hidden = f"{user}:***" if colon else user
    return f"{scheme}://{hidden}@{hosts}{slash}{tail}"


@dataclass(frozen=True, slots=True)
class MqttAddress:
    """Where and how to reach an MQTT broker, read from an ``mqtt[s]://`` URL."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """A ``redis+sentinel://[:password@]host:port[,host:port...]/master[/db]`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # IPv6 literal: [::1]:26379
        host, _, port_text = text[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"{text!r} names no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a port number (1-65535)")
    return host, int(port_text)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None


def parse_mqtt_url(url: str) -> MqttAddress:
    """Read ``mqtt://[user:pass@]host[:port]`` or ``mqtts://...`` (TLS).

    Raises:
        ValueError: The URL is not of that form; the message says why.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _MQTT_SCHEMES:
        raise ValueError("must look like mqtt://[user:pass@]host[:port] or mqtts://... for TLS")
    netloc, _, path = rest.partition("/")
    if path:
        raise ValueError(f"takes no path (found /{path}); use mqtt://host:port")
    userinfo, _, hostport = netloc.rpartition("@")
    host, port = _host_port(hostport, _MQTT_SCHEMES[scheme])
    username, password = _credentials(userinfo)
    return MqttAddress(host, port, scheme == "mqtts", username, password)


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Read ``redis+sentinel://[[user]:password@]host:port[,host:port...]/master[/db]``.

    Raises:
        ValueError: The URL is not of that form; the message says why.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "redis+sentinel":
        raise ValueError("must start with redis+sentinel://")
    netloc, _, path = rest.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    sentinels = tuple(_host_port(part, 26379) for part in hostlist.split(","))
    master, _, db_text = path.strip("/").partition("/")
    if not master:
        raise ValueError("names no master: use redis+sentinel://host:26379/MASTER_NAME[/db]")
    if db_text and not db_text.isdigit():
        raise ValueError(f"database {db_text!r} is not a number")
    username, password = _credentials(userinfo)
    return SentinelAddress(sentinels, master, int(db_text or 0), username, password)


def _default_server_name() -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "server"
    return name if _NAME_RE.match(name) else f"_{name}"  # a digit may not lead


def config_file() -> Path | None:
    """Return the config file to read, or ``None`` when there is none.

    Raises:
        ConfigError: ``DEPLOYCTL_CONFIG`` names a file that does not exist.
    """
    explicit = os.environ.get("DEPLOYCTL_CONFIG")
    if explicit:
        path = Path(explicit).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(
                f"DEPLOYCTL_CONFIG names {path}, which is not a file; "
                "create it or unset DEPLOYCTL_CONFIG"
            )
        return path
    for candidate in (Path("deployctl.toml"), Path("~/.config/deployctl/config.toml")):
        path = candidate.expanduser().absolute()
        if path.is_file():
            return path
    return None


class _TomlFile(TomlConfigSettingsSource):
    """A TOML source whose syntax errors are :class:`ConfigError` naming the file."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"config file {file_path} is not valid TOML ({exc}); "
                "fix it, or point DEPLOYCTL_CONFIG at another file"
            ) from exc


def default_home() -> Path:
    """The well-known state folder: ``$XDG_STATE_HOME/deployctl``, else ``~/.local/state/...``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "deployctl"


class Settings(BaseSettings):
    """Everything deployctl needs to reach its backends and name itself.

    Raises:
        ConfigError: A value is invalid; the message names the setting and
            where to change it.
    """

    model_config = SettingsConfigDict(env_prefix="DEPLOYCTL_", frozen=True, extra="forbid")
    _URL_FIELDS: ClassVar[frozenset[str]] = frozenset({"redis_url", "mqtt_url"})

    home: Path = Field(default_factory=lambda: default_home())
    """Folder for embedded state (``DEPLOYCTL_HOME``): ``$XDG_STATE_HOME/deployctl``, else
    ``~/.local/state/deployctl``; one place, so the CLI finds ``deployctl up`` from any folder."""
    connect_timeout: float = Field(10.0, gt=0)
    """Seconds to keep retrying to reach Redis or the broker before giving up."""

    redis_url: str | None = None
    """redis://, rediss://, unix:// or redis+sentinel://; ``None`` runs an embedded Redis."""
    redis_embedded_path: Path = Path()  # replaced by home / "redis.db" unless set
    """Data file of the embedded Redis; its append-only log sits beside it."""
    redis_sentinel_password: SecretStr | None = None
    """Password of the Sentinels themselves (the URL's password is the master's)."""

    mqtt_url: str | None = None
    """mqtt://[user:pass@]host[:port] or mqtts:// (TLS); ``None`` runs an embedded broker."""
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls_ca: Path | None = None
    mqtt_tls_cert: Path | None = None
    mqtt_tls_key: Path | None = None
    mqtt_tls_insecure: bool = False
    """Skip checking the broker's certificate and host name (testing only)."""
    mqtt_client_id: str | None = None

    embedded_mqtt_host: str = "127.0.0.1"
    embedded_mqtt_port: int = Field(18830, gt=0, lt=65536)
    embedded_mqtt_password_file: Path | None = None
    """amqtt password file (see ``write_password_file``); required off loopback."""

    key_prefix: str = "deployctl:"
    topic_prefix: str = "deployctl/"
    server_name: str = Field(default_factory=_default_server_name)
    """This machine's name in addresses (``server:service/CMD``); the host name by default."""
    zone: str = ""

    health_interval: float = Field(5.0, gt=0)
    """Seconds between the health records ``communicatord`` and the controller write; each
    lives :attr:`health_ttl` (three intervals), so ``--check`` fails soon after a process dies."""

    clock_interval: float = Field(60.0, ge=0)
    """Seconds between the leading controller's clock checks (``deployctl clock check``);
    ``0`` turns them off. Each raises a status flag per server beyond :attr:`clock_threshold`."""
    clock_threshold: float = Field(0.05, gt=0)
    """Seconds a server's clock may be off the controller's before its status flag is raised."""
    clock_samples: int = Field(4, ge=1, le=100)
    """CLOCK round trips per server and check; the one with the smallest delay counts."""

    @property
    def health_ttl(self) -> float:
        """Seconds a health record lives: three :attr:`health_interval` (two writes may fail)."""
        return 3 * self.health_interval

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from exc

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read the command line, then the environment, then the config file."""
        return init_settings, env_settings, _TomlFile(settings_cls, toml_file=config_file())

    @model_validator(mode="before")
    @classmethod
    def _embedded_path_under_home(cls, values: Any) -> Any:
        if isinstance(values, dict) and not values.get("redis_embedded_path"):
            home = values.get("home") or default_home()
            values = {**values, "redis_embedded_path": Path(home) / "redis.db"}
        return values

    @field_validator("redis_url", "mqtt_url", mode="before")
    @classmethod
    def _empty_url_is_embedded(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        scheme = url.partition("://")[0]
        if scheme not in _REDIS_SCHEMES:
            raise ValueError(
                "must start with redis://, rediss://, unix:// or redis+sentinel:// "
                "(e.g. redis://127.0.0.1:6379/0); leave it unset for the embedded Redis"
            )
        if scheme == "redis+sentinel":
            parse_sentinel_url(url)
        else:
            parts = urlsplit(url)
            if scheme != "unix" and not parts.hostname:
                raise ValueError("names no host (e.g. redis://127.0.0.1:6379/0)")
            if scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
                raise ValueError(
                    f"database {parts.path!r} is not a number (e.g. redis://host:6379/0)"
                )
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]  # ValueError
        return url

    @field_validator("server_name")
    @classmethod
    def _check_server_name(cls, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(
                f"{name!r} is not a name: use letters, digits and _, not starting with a digit"
            )
        return name

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, url: str | None) -> str | None:
        if url is not None:
            parse_mqtt_url(url)
        return url

    @model_validator(mode="after")
    def _tls_cert_with_key(self) -> Settings:
        if (self.mqtt_tls_cert is None) != (self.mqtt_tls_key is None):
            raise ValueError(
                "mqtt_tls_cert and mqtt_tls_key go together: set both "
                "(DEPLOYCTL_MQTT_TLS_CERT and DEPLOYCTL_MQTT_TLS_KEY) or neither"
            )
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            hide = name in self._URL_FIELDS and isinstance(value, str)
            yield name, masked(value) if hide else value


def _explain(exc: ValidationError) -> str:
    """Say which settings are wrong and where each can be changed."""
    try:
        source = config_file()
    except ConfigError:
        source = None
    file = str(source) if source else "the config file"
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        name = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown setting {name!r} (in {file}?); remove it or fix its spelling")
        elif name:
            lines.append(
                f"{name}: {message}; fix --{name.replace('_', '-')}, "
                f"DEPLOYCTL_{name.upper()} or {name} in {file}"
            )
        else:
            lines.append(message)
    return "invalid configuration: " + "\n  ".join(lines)
