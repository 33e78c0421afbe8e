"""The settings model: sources and their priority, defaults, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from communicator._errors import ConfigError
from communicator.backends._settings import (
    Settings,
    masked,
    parse_mqtt_url,
    parse_sentinel_url,
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory and home, so no real config file is read."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_use_embedded_backends(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing set, both backends are embedded; state lives in one well-known folder."""
    monkeypatch.delenv("XDG_STATE_HOME")
    settings = Settings()
    assert settings.redis_url is None
    assert settings.mqtt_url is None
    state = workdir / "home" / ".local" / "state" / "deployctl"
    assert settings.home == state
    assert settings.redis_embedded_path == state / "redis.db"
    monkeypatch.setenv("XDG_STATE_HOME", str(workdir / "xdg"))
    assert Settings().home == workdir / "xdg" / "deployctl"
    assert (settings.embedded_mqtt_host, settings.embedded_mqtt_port) == ("127.0.0.1", 18830)
    assert settings.embedded_mqtt_password_file is None
    assert (settings.key_prefix, settings.topic_prefix, settings.zone) == (
        "deployctl:",
        "deployctl/",
        "",
    )
    assert settings.mqtt_tls_insecure is False


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [("web-01.example.com", "web_01_example_com"), ("9lives", "_9lives"), ("vm", "vm")],
)
def test_server_name_defaults_to_sanitised_hostname(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, hostname: str, expected: str
) -> None:
    """The host name becomes a valid name: '-' and '.' turn into '_', no leading digit."""
    monkeypatch.setattr("socket.gethostname", lambda: hostname)
    assert Settings().server_name == expected


def test_home_moves_the_embedded_redis_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DEPLOYCTL_HOME is the folder of the embedded state, unless the path is set itself."""
    monkeypatch.setenv("DEPLOYCTL_HOME", str(workdir / "state"))
    assert Settings().redis_embedded_path == workdir / "state" / "redis.db"
    monkeypatch.setenv("DEPLOYCTL_REDIS_EMBEDDED_PATH", str(workdir / "x.db"))
    assert Settings().redis_embedded_path == workdir / "x.db"


def test_priority_cli_then_environment_then_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyword arguments beat the environment, which beats the file, which beats defaults."""
    (workdir / "deployctl.toml").write_text(
        'zone = "file"\nkey_prefix = "file:"\ntopic_prefix = "file/"\n'
    )
    monkeypatch.setenv("DEPLOYCTL_ZONE", "env")
    monkeypatch.setenv("DEPLOYCTL_KEY_PREFIX", "env:")
    settings = Settings(zone="cli")
    assert (settings.zone, settings.key_prefix, settings.topic_prefix) == ("cli", "env:", "file/")
    assert settings.server_name  # untouched: the default


def test_config_file_locations(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DEPLOYCTL_CONFIG wins over ./deployctl.toml, which wins over ~/.config/deployctl."""
    user_file = workdir / "home" / ".config" / "deployctl" / "config.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text('zone = "user"\n')
    assert Settings().zone == "user"
    (workdir / "deployctl.toml").write_text('zone = "here"\n')
    assert Settings().zone == "here"
    explicit = workdir / "elsewhere.toml"
    explicit.write_text('zone = "explicit"\n')
    monkeypatch.setenv("DEPLOYCTL_CONFIG", str(explicit))
    assert Settings().zone == "explicit"


def test_missing_explicit_config_file_is_an_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DEPLOYCTL_CONFIG naming no file is a mistake worth reporting."""
    monkeypatch.setenv("DEPLOYCTL_CONFIG", str(workdir / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml.*unset DEPLOYCTL_CONFIG"):
        Settings()


def test_invalid_toml_names_file_and_fix(workdir: Path) -> None:
    """A config file that is not TOML is a ConfigError naming the file."""
    (workdir / "deployctl.toml").write_text("zone = \n")
    with pytest.raises(ConfigError, match=r"deployctl\.toml is not valid TOML.*fix it"):
        Settings()


def test_unknown_key_in_file_is_refused(workdir: Path) -> None:
    """A misspelt setting is reported, with the file it came from."""
    (workdir / "deployctl.toml").write_text('mqtt_ur = "mqtt://h"\n')
    with pytest.raises(ConfigError, match=r"unknown setting 'mqtt_ur'.*deployctl\.toml"):
        Settings()


def test_bad_value_in_file_names_setting_and_places(workdir: Path) -> None:
    """A wrong value says which setting, and every place it can be fixed."""
    (workdir / "deployctl.toml").write_text('embedded_mqtt_port = "many"\n')
    with pytest.raises(ConfigError) as caught:
        Settings()
    message = str(caught.value)
    assert "embedded_mqtt_port" in message
    assert "DEPLOYCTL_EMBEDDED_MQTT_PORT" in message
    assert str(workdir / "deployctl.toml") in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@redis.example:6380/2",
        "unix:///run/redis.sock?db=3",
        "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/1",
    ],
)
def test_valid_redis_urls(workdir: Path, url: str) -> None:
    """Each supported Redis URL form is accepted as is."""
    assert Settings(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://127.0.0.1:6379", "must start with redis://"),
        ("redis://:6379/0", "names no host"),
        ("redis://h:6379/zero", "is not a number"),
        ("redis+sentinel://h:26379", "names no master"),
        ("redis+sentinel://h:x/m", "not a port number"),
    ],
)
def test_invalid_redis_urls(workdir: Path, url: str, complaint: str) -> None:
    """A wrong Redis URL fails at load, saying why and where to fix it."""
    with pytest.raises(ConfigError, match=complaint) as caught:
        Settings(redis_url=url)
    assert "DEPLOYCTL_REDIS_URL" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("tcp://broker:1883", "must look like mqtt://"),
        ("mqtt://broker:99999", "not a port number"),
        ("mqtt://broker:1883/topic", "takes no path"),
        ("mqtt://:1883", "names no host"),
    ],
)
def test_invalid_mqtt_urls(workdir: Path, url: str, complaint: str) -> None:
    """A wrong MQTT URL fails at load, saying why and where to fix it."""
    with pytest.raises(ConfigError, match=complaint) as caught:
        Settings(mqtt_url=url)
    assert "DEPLOYCTL_MQTT_URL" in str(caught.value)


def test_url_errors_do_not_leak_passwords(workdir: Path) -> None:
    """The error for a bad URL never repeats the password in it."""
    with pytest.raises(ConfigError) as caught:
        Settings(mqtt_url="mqtt://user:hunter2@broker:1883/x")
    assert "hunter2" not in str(caught.value)


def test_empty_url_means_embedded(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty DEPLOYCTL_REDIS_URL / DEPLOYCTL_MQTT_URL selects the embedded backend."""
    monkeypatch.setenv("DEPLOYCTL_REDIS_URL", "")
    monkeypatch.setenv("DEPLOYCTL_MQTT_URL", "")
    settings = Settings()
    assert (settings.redis_url, settings.mqtt_url) == (None, None)


def test_server_name_must_be_a_name(workdir: Path) -> None:
    """A server name must fit Snap!-style addresses."""
    with pytest.raises(ConfigError, match=r"not a name.*DEPLOYCTL_SERVER_NAME"):
        Settings(server_name="web-01")


def test_tls_cert_needs_key(workdir: Path) -> None:
    """A client certificate without its key is refused, naming both settings."""
    with pytest.raises(ConfigError, match="DEPLOYCTL_MQTT_TLS_KEY"):
        Settings(mqtt_tls_cert=workdir / "client.pem")


def test_repr_hides_secrets(workdir: Path) -> None:
    """Neither URL passwords nor the MQTT password show in the settings' repr."""
    settings = Settings(
        redis_url="redis://:r3dis@h:6379/0", mqtt_url="mqtt://u:mq77@h", mqtt_password="sekrit"
    )
    shown = repr(settings)
    assert "r3dis" not in shown
    assert "mq77" not in shown
    assert "sekrit" not in shown
    assert "redis://:***@h:6379/0" in shown


def test_settings_are_frozen(workdir: Path) -> None:
    """Settings cannot change after load: every component sees the same values."""
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.zone = "other"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("redis://user:pw@h:1", "redis://user:***@h:1"),
        ("mqtt://user@h", "mqtt://user@h"),
        ("mqtt://h:1883", "mqtt://h:1883"),
        ("redis+sentinel://:p@a:1,b:2/m", "redis+sentinel://:***@a:1,b:2/m"),
        ("unix://:p@/tmp/r.sock", "unix://:***@/tmp/r.sock"),
        ("not a url", "not a url"),
    ],
)
def test_masked(url: str, expected: str) -> None:
    """masked() hides exactly the password."""
    assert masked(url) == expected


def test_parse_mqtt_url() -> None:
    """MQTT URLs give host, port (1883 / 8883 by default), TLS and credentials."""
    plain = parse_mqtt_url("mqtt://broker")
    assert (plain.host, plain.port, plain.tls, plain.username) == ("broker", 1883, False, None)
    secure = parse_mqtt_url("mqtts://al%40ce:p%3Ass@[::1]")
    assert (secure.host, secure.port, secure.tls) == ("::1", 8883, True)
    assert (secure.username, secure.password) == ("al@ce", "p:ss")


def test_parse_sentinel_url() -> None:
    """Sentinel URLs give every Sentinel, the master's name, its database and password."""
    address = parse_sentinel_url("redis+sentinel://:pw@a:26379,b/mymaster/2")
    assert address.sentinels == (("a", 26379), ("b", 26379))
    assert (address.master, address.db, address.password) == ("mymaster", 2, "pw")
