"""``deployctl broker-config``: the text it prints, and the real thing run by Mosquitto."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from typer.testing import CliRunner

from communicator.backends._link import MAX_PACKET_SIZE
from controller.cli._app import app
from tests.conftest import Server, answers, free_port

TIMEOUT = 5.0
runner = CliRunner()


def test_broker_config_follows_the_topic_prefix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The ACL names the configured prefix; --out writes both files, referenced by absolute path."""
    monkeypatch.setenv("DEPLOYCTL_TOPIC_PREFIX", "site/")
    result = runner.invoke(app, ["broker-config", "--out", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    acl = (tmp_path / "b" / "acl").read_text()
    assert acl == data["acl"]
    assert "pattern write site/in/%c\npattern read site/out/%c\n" in acl
    assert "user communicator\ntopic read site/in/+\ntopic write site/out/+\n" in acl
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    for line in (
        "per_listener_settings false",
        "allow_anonymous false",
        "allow_zero_length_clientid false",
        f"max_packet_size {MAX_PACKET_SIZE}",
        f"password_file {tmp_path / 'b' / 'passwd'}",
        f"acl_file {tmp_path / 'b' / 'acl'}",
        "listener 8883",
        "listener 1883 127.0.0.1",
    ):
        assert line in conf.splitlines()
    # use_username_as_clientid is a listener's option: each listener must say it.
    assert conf.count("use_username_as_clientid true") == conf.count("\nlistener ") == 2
    assert f"mosquitto_passwd -c {tmp_path / 'b' / 'passwd'} communicator" in data["instructions"]
    assert (data["communicator_users"], data["max_packet_size"]) == (
        ["communicator"],
        MAX_PACKET_SIZE,
    )
    human = runner.invoke(app, ["broker-config", "--no-tls"])
    assert "listener 8883" not in human.stdout
    assert "acl_file /etc/mosquitto/deployctl/acl" in human.stdout
    assert "DEPLOYCTL_MQTT_USERNAME=orders-1 DEPLOYCTL_MQTT_CLIENT_ID=orders-1" in human.stdout
    same = runner.invoke(app, ["broker-config", "--tls-port", "1883"])
    assert same.exit_code == 2


def test_each_communicator_has_a_user_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """--communicator-user repeats: an ACL block and a password line each; no user twice."""
    monkeypatch.setenv("DEPLOYCTL_TOPIC_PREFIX", "site/")
    users = ["--communicator-user", "c1", "--communicator-user", "c2"]
    result = runner.invoke(app, ["broker-config", *users, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for user in ("c1", "c2"):
        assert f"user {user}\ntopic read site/in/+\ntopic write site/out/+\n" in data["acl"]
    first = data["instructions"].index("mosquitto_passwd -c /etc/mosquitto/deployctl/passwd c1")
    assert data["instructions"][first + 1] == "mosquitto_passwd /etc/mosquitto/deployctl/passwd c2"
    for wrong in (["c1", "c1"], ["a/b"], ["x+"]):
        refused = runner.invoke(
            app, ["broker-config", *(f"--communicator-user={u}" for u in wrong), "--json"]
        )
        assert refused.exit_code != 0, wrong
        assert "--communicator-user" in refused.output


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, its own CA, and its key."""
    cert, key = folder / "server.pem", folder / "server.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def add_user(passwords: Path, user: str, password: str, *, create: bool = False) -> None:
    """Add an MQTT user the way the printed instructions say (non-interactively)."""
    command = [
        "mosquitto_passwd",
        "-b",
        *(["-c"] if create else []),
        str(passwords),
        user,
        password,
    ]
    subprocess.run(command, check=True, capture_output=True)


async def first_message(client: aiomqtt.Client) -> tuple[str, bytes]:
    """The next message the client receives (topic, payload), or fail after a timeout."""
    async with asyncio.timeout(TIMEOUT):
        message = await anext(client.messages)
    assert isinstance(message.payload, bytes)
    return message.topic.value, message.payload


@pytest.mark.integration
@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("mosquitto", "mosquitto_passwd", "openssl")),
    reason="needs mosquitto, mosquitto_passwd and openssl",
)
async def test_broker_config_runs_in_mosquitto_and_isolates_clients(
    tmp_path: Path, spawn: Callable[..., Server], topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mosquitto runs the generated config: no anonymous login, each client its own topics.

    Client ids bound to logins, and the packet size limit: tests/controller/test_broker_binding.py.
    """
    monkeypatch.setenv("DEPLOYCTL_TOPIC_PREFIX", topic_prefix)
    cert, key = self_signed_certificate(tmp_path)
    tls_port, local_port, folder = free_port(), free_port(), tmp_path / "broker"
    result = await asyncio.to_thread(
        runner.invoke,
        app,
        [
            "broker-config",
            "--out",
            str(folder),
            "--tls-port",
            str(tls_port),
            "--local-port",
            str(local_port),
            "--cafile",
            str(cert),
            "--certfile",
            str(cert),
            "--keyfile",
            str(key),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    # Started as root, Mosquitto would drop to user mosquitto, who cannot enter tmp_path.
    with (folder / "mosquitto.conf").open("a") as conf:
        conf.write("user root\npersistence false\n")
    add_user(folder / "passwd", "communicator", "router-secret", create=True)
    add_user(folder / "passwd", "alpha", "alpha-secret")  # an instance: user name = client id
    spawn(
        "mosquitto-generated",
        ["mosquitto", "-c", str(folder / "mosquitto.conf")],
        ready=lambda: answers("127.0.0.1", tls_port) and answers("127.0.0.1", local_port),
    )

    def client(client_id: str, user: str | None, password: str | None, **kw: Any) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            kw.pop("port", local_port),
            identifier=client_id,
            username=user,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V311,
            timeout=TIMEOUT,
            **kw,
        )

    tls = {"port": tls_port, "tls_params": aiomqtt.TLSParameters(ca_certs=str(cert))}
    for refused in (
        client("anon", None, None),
        client("anon-tls", None, None, **tls),
        client("guess", "alpha", "wrong"),
    ):
        with pytest.raises(aiomqtt.MqttCodeError, match=r"[Nn]ot authori[sz]ed"):
            async with refused:
                pass

    inbound, outbound = f"{topic_prefix}in/", f"{topic_prefix}out/"
    async with (
        client("router-1", "communicator", "router-secret") as router,
        client("alpha", "alpha", "alpha-secret", **tls) as alpha,
    ):
        await router.subscribe(f"{inbound}+", qos=1)
        await alpha.subscribe(f"{outbound}alpha", qos=1)
        # Mosquitto 2.0 grants this subscription, but the ACL keeps beta's messages from alpha:
        await alpha.subscribe(f"{outbound}beta", qos=1)
        # sent in this order, alpha seeing "hello" first proves "secret" never reached it.
        await router.publish(f"{outbound}beta", b"secret", qos=1)
        await router.publish(f"{outbound}alpha", b"hello", qos=1)
        assert await first_message(alpha) == (f"{outbound}alpha", b"hello")
        # Publishing as another client is dropped; its own in topic goes through.
        await alpha.publish(f"{inbound}beta", b"forged", qos=1)
        await alpha.publish(f"{inbound}alpha", b"REGISTER service=orders;version=1", qos=1)
        assert await first_message(router) == (
            f"{inbound}alpha",
            b"REGISTER service=orders;version=1",
        )
        # Communicators hand each other request watches; an instance cannot forge one.
        track = f"{topic_prefix}track/"
        await router.subscribe(f"{track}+", qos=1)
        await alpha.publish(f"{track}3", b"forged", qos=1)
        await router.publish(f"{track}3", b"[]", qos=1)
        assert await first_message(router) == (f"{track}3", b"[]")
