"""Building MQTT clients from the settings, and waiting for the broker.

With ``mqtt_url`` unset, clients go to the embedded broker
(``embedded_mqtt_host:embedded_mqtt_port``). The username and password come
from ``mqtt_username`` / ``mqtt_password`` when set, else from the URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
import uuid
from typing import Any

import aiomqtt
from aiomqtt import MqttCodeError, MqttError, ProtocolVersion, TLSParameters

from communicator._errors import BackendError
from communicator.backends._backoff import backoff
from communicator.backends._settings import MqttAddress, Settings, masked, parse_mqtt_url

logger = logging.getLogger(__name__)

# CONNACK codes of MQTT 3.1.1 (4, 5) and their MQTT 5 reason codes (134, 135).
_NOT_AUTHORISED = frozenset({4, 5, 134, 135})
_BAD_CLIENT_ID = frozenset({2, 133})


def _local(host: str) -> str:
    """The address a local client dials for a listener bound to ``host``."""
    if not host:  # every interface
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return host


def broker_address(settings: Settings) -> MqttAddress:
    """Where the settings send MQTT clients, with the credentials to use."""
    if settings.mqtt_url is None:
        url = MqttAddress(_local(settings.embedded_mqtt_host), settings.embedded_mqtt_port, False)
    else:
        url = parse_mqtt_url(settings.mqtt_url)
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
    return MqttAddress(
        url.host,
        url.port,
        url.tls,
        settings.mqtt_username or url.username,
        password or url.password,
    )


def broker_url(settings: Settings) -> str:
    """The broker's URL for messages and logs, without any password."""
    if settings.mqtt_url is not None:
        return masked(settings.mqtt_url)
    address = broker_address(settings)
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"mqtt://{host}:{address.port}"


def mqtt_client(
    settings: Settings, *, client_id: str, will: aiomqtt.Will | None = None, **kw: Any
) -> aiomqtt.Client:
    """Build an (unconnected) aiomqtt client for the configured broker.

    It speaks MQTT 3.1.1 (the embedded broker speaks nothing else) unless
    ``protocol=`` says otherwise. With ``mqtts://`` it checks the broker's
    certificate against ``mqtt_tls_ca`` (or the system's CAs) and presents
    ``mqtt_tls_cert``/``mqtt_tls_key`` when set; certificate files are read when
    connecting, in aiomqtt's connect thread, not on the event loop.

    Args:
        settings: The broker's address, credentials and TLS files.
        client_id: The MQTT client identifier (broker ACLs may key on it).
        will: The message the broker publishes if we vanish without a goodbye.
        **kw: Any other ``aiomqtt.Client`` argument; wins over the settings.

    Returns:
        A client to use as ``async with client: ...``.
    """
    address = broker_address(settings)
    options: dict[str, Any] = {
        "username": address.username,
        "password": address.password,
        "identifier": client_id,
        "will": will,
        "protocol": ProtocolVersion.V311,
        # Nagle's algorithm with delayed ACKs stalls small request/reply messages ~40 ms.
        "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    }
    if address.tls:
        insecure = settings.mqtt_tls_insecure
        options["tls_params"] = TLSParameters(
            ca_certs=str(settings.mqtt_tls_ca) if settings.mqtt_tls_ca else None,
            certfile=str(settings.mqtt_tls_cert) if settings.mqtt_tls_cert else None,
            keyfile=str(settings.mqtt_tls_key) if settings.mqtt_tls_key else None,
            cert_reqs=ssl.CERT_NONE if insecure else ssl.CERT_REQUIRED,
        )
        options["tls_insecure"] = insecure
    options.update(kw)
    return aiomqtt.Client(address.host, address.port, **options)


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The TLS checks ``mqtt_client`` asks paho for, as a context (reads files: blocking)."""
    context = ssl.create_default_context(
        cafile=str(settings.mqtt_tls_ca) if settings.mqtt_tls_ca else None
    )
    if settings.mqtt_tls_cert and settings.mqtt_tls_key:
        context.load_cert_chain(settings.mqtt_tls_cert, settings.mqtt_tls_key)
    if settings.mqtt_tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _check_tls(settings: Settings, address: MqttAddress) -> None:
    """Shake hands with the broker over TLS, to fail cleanly on a certificate problem.

    paho leaks the socket of a failed handshake (ResourceWarning), so the probe
    finds TLS problems with asyncio first.
    """
    try:
        context = await asyncio.to_thread(tls_context, settings)
    except OSError as exc:  # ssl.SSLError too: a file that is not PEM
        raise BackendError(
            f"cannot load the MQTT TLS files ({exc}); fix DEPLOYCTL_MQTT_TLS_CA, "
            "DEPLOYCTL_MQTT_TLS_CERT or DEPLOYCTL_MQTT_TLS_KEY",
            backend="mqtt",
            url=broker_url(settings),
        ) from exc
    _, writer = await asyncio.open_connection(
        address.host, address.port, ssl=context, server_hostname=address.host
    )
    writer.close()
    await writer.wait_closed()


def _code(exc: BaseException) -> int | None:
    if not isinstance(exc, MqttCodeError) or exc.rc is None:
        return None
    return exc.rc if isinstance(exc.rc, int) else int(exc.rc.value)


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: anything but a refusal of who we are or a TLS failure."""
    code = _code(exc)
    if code in _NOT_AUTHORISED or code in _BAD_CLIENT_ID:
        return False
    cause = exc if isinstance(exc, OSError) else exc.__context__
    return isinstance(exc, MqttError | OSError) and not isinstance(cause, ssl.SSLError)


def _backend_error(settings: Settings, exc: BaseException, timeout: float) -> BackendError:
    url = broker_url(settings)
    code, cause = _code(exc), exc if isinstance(exc, OSError) else exc.__context__
    if code in _NOT_AUTHORISED:
        user = broker_address(settings).username
        who = f"user {user!r}" if user else "anonymous clients"
        message = (
            f"MQTT broker at {url} says not authorised ({exc}) for {who}; fix "
            "DEPLOYCTL_MQTT_USERNAME and DEPLOYCTL_MQTT_PASSWORD (or user:password in "
            "DEPLOYCTL_MQTT_URL) to match the broker's password file"
        )
    elif code in _BAD_CLIENT_ID:
        message = (
            f"MQTT broker at {url} refused our client id ({exc}); "
            "set DEPLOYCTL_MQTT_CLIENT_ID to one its ACL allows"
        )
    elif isinstance(cause, ssl.SSLError):
        message = (
            f"TLS with the MQTT broker at {url} failed ({cause}); set DEPLOYCTL_MQTT_TLS_CA "
            "to the CA that signed its certificate (DEPLOYCTL_MQTT_TLS_INSECURE=1 to skip "
            "the check while testing)"
        )
    elif isinstance(cause, ConnectionRefusedError):
        message = f"MQTT broker at {url} refused the connection; start it or set DEPLOYCTL_MQTT_URL"
    elif isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
        message = f"cannot reach the MQTT broker at {url} ({cause}); check DEPLOYCTL_MQTT_URL"
    else:
        message = (
            f"MQTT broker at {url} did not accept us within {timeout:g} s ({exc!r}); check "
            "DEPLOYCTL_MQTT_URL, or raise DEPLOYCTL_CONNECT_TIMEOUT"
        )
    return BackendError(message, backend="mqtt", url=url)


async def wait_for_broker(
    settings: Settings, deadline: float | None = None, *, client_id: str | None = None
) -> None:
    """Connect to the broker and disconnect, retrying until it accepts us.

    Args:
        settings: Which broker, with which credentials.
        deadline: Seconds to keep trying; ``settings.connect_timeout`` by default.
            An attempt started in time may overrun it by the TCP connect timeout.
        client_id: The id to probe with; a random one by default.

    Raises:
        BackendError: The broker stayed unreachable, or refused our credentials
            (at once: retrying a wrong password helps nobody); the message says
            which, and what to change.
    """
    deadline = settings.connect_timeout if deadline is None else deadline
    # Not mqtt_client_id: a probe with a live client's id would kick that client off.
    probe_id = client_id or f"deployctl-probe-{uuid.uuid4().hex[:12]}"
    end = time.monotonic() + deadline
    address = broker_address(settings)
    try:
        async for attempt in backoff(deadline=deadline, transient=_transient):
            with attempt:
                remaining = max(end - time.monotonic(), 0.1)
                if address.tls:
                    async with asyncio.timeout(remaining):
                        await _check_tls(settings, address)
                async with mqtt_client(settings, client_id=probe_id, timeout=remaining):
                    pass
    except (MqttError, OSError) as exc:
        raise _backend_error(settings, exc, deadline) from exc
    logger.debug("MQTT broker at %s accepts us", broker_url(settings))
