"""The one exception tree of deployctl.

Every error the product raises derives from :class:`DeployctlError`, carries
its context as attributes and says, in its message, what to do next. The tree
is rooted here, in the lowest layer, so that every package can extend it::

    DeployctlError
    ├── MessageError (ValueError)        a message that cannot be read or sent
    ├── DefinitionError                  a message or service definition file
    ├── ConfigError                      settings
    ├── BackendError                     Redis or the broker unreachable (backend, url)
    ├── RegistryError                    a registry call with bad names or counts
    ├── ClientError                      the client library
    │   ├── RegistrationRefused          REFUSE (reason, retry_after)
    │   └── RequestFailed                no reply, or an error reply
    ├── LinkError (ConnectionError)      the router's broker link (backends._link)
    ├── ProtocolError (ValueError)       bytes that are not MQTT (backends._mqtt_packets)
    └── the other packages' own: flags.FlagError, flags.UnknownOperator, controller's ...

Daemons choose their exit code by class: 3 for a backend (``BackendError``,
``LinkError``), 2 for the rest.
"""

from __future__ import annotations


class DeployctlError(Exception):
    """Base of every error deployctl raises on purpose."""


class MessageError(DeployctlError, ValueError):
    """A message could not be decoded or encoded.

    Attributes:
        reason: What is wrong, in words.
        position: Offset (characters into the text, or bytes into the payload)
            where the problem was found, or ``None`` when it is not positional.
    """

    def __init__(self, reason: str, position: int | None = None) -> None:
        self.reason = reason
        self.position = position
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"{reason}{where}")


class DefinitionError(DeployctlError):
    """A message, service or other YAML definition is invalid.

    Attributes:
        path: The file the definition came from, when there is one.
        line: The 1-based line of the problem in that file, when known.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")


class ConfigError(DeployctlError):
    """The configuration cannot work as given; the message names the setting to change."""


class BackendError(DeployctlError):
    """Redis or the MQTT broker could not be reached or refused us.

    Attributes:
        backend: ``"redis"`` or ``"mqtt"``.
        url: The address we tried, with any password masked.
    """

    def __init__(self, message: str, *, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url
        super().__init__(message)


class RegistryError(DeployctlError):
    """The registry refused a request, or holds data in Redis that it cannot read.

    Attributes:
        service: The service concerned, when there is one.
        version: The version concerned, when there is one.
    """

    def __init__(
        self, message: str, *, service: str | None = None, version: str | None = None
    ) -> None:
        self.service = service
        self.version = version
        super().__init__(message)


class ClientError(DeployctlError):
    """The client library could not do what was asked.

    Attributes:
        service: The service of the client.
    """

    def __init__(self, message: str, *, service: str) -> None:
        self.service = service
        super().__init__(message)


class RegistrationRefused(ClientError):
    """The communicator answered REGISTER with REFUSE.

    Attributes:
        reason: ``bad_password``, ``password_required``, ``throttled``,
            ``version_invalid`` or ``malformed``.
        retry_after: For ``throttled``, seconds to wait before trying again.
    """

    def __init__(
        self, message: str, *, service: str, reason: str, retry_after: float | None = None
    ) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(message, service=service)


class RequestFailed(ClientError):
    """A request got an ERROR, UNKNOWN or INVALID answer, or none in time.

    Attributes:
        command: The command of the request.
        answer: The answer received (``None`` on timeout).
    """

    def __init__(
        self, message: str, *, service: str, command: str, answer: object | None = None
    ) -> None:
        self.command = command
        self.answer = answer
        super().__init__(message, service=service)
