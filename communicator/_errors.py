"""The one exception tree of deployctl.

Every error the product raises derives from :class:`DeployctlError`, carries
its context as attributes and says, in its message, what to do next. The tree
is rooted here, in the lowest layer, so that every package can extend it.
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
