"""Finding a running ``deployctl up`` from any folder, and never starting a Redis by surprise.

``deployctl up`` writes ``up.json`` in the well-known state folder
(``Settings.home``) with its process id and the URLs of its broker and Redis,
and removes it when it stops. A command given no ``DEPLOYCTL_REDIS_URL`` uses
that stack when its process is alive, and otherwise stops with an error that
names both ways out, instead of starting an empty Redis of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from communicator import BackendError, Settings

UP_FILE = "up.json"


def up_file(settings: Settings) -> Path:
    """Where ``deployctl up`` announces itself."""
    return settings.home / UP_FILE


def announce_up(settings: Settings, environment: dict[str, str]) -> Path:
    """Record this process as the running ``deployctl up`` (see :func:`running_up`)."""
    path = up_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), **environment}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.chmod(0o600)
    temporary.replace(path)
    return path


def withdraw_up(settings: Settings) -> None:
    """Remove the record, if it is still this process's."""
    found = running_up(settings)
    if found is not None and found.get("pid") == os.getpid():
        up_file(settings).unlink(missing_ok=True)


def running_up(settings: Settings) -> dict[str, Any] | None:
    """The record of the ``deployctl up`` running on this machine, or None (stale ones too)."""
    try:
        record = json.loads(up_file(settings).read_text())
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, under another user
    return dict(record)


def with_backends(settings: Settings) -> Settings:
    """``settings`` pointing at a Redis (and broker): configured, or the running ``up``'s.

    Raises:
        BackendError: No Redis is configured and no ``deployctl up`` runs.
    """
    if settings.redis_url is not None:
        return settings
    record = running_up(settings)
    if record is None or not record.get("DEPLOYCTL_REDIS_URL"):
        raise BackendError(
            "no Redis to use: DEPLOYCTL_REDIS_URL is not set and no `deployctl up` is "
            f"running (it would be recorded in {up_file(settings)}); start `deployctl up`, "
            "or set DEPLOYCTL_REDIS_URL=redis://HOST:6379/0 (and DEPLOYCTL_MQTT_URL)",
            backend="redis",
            url="",
        )
    update: dict[str, Any] = {"redis_url": record["DEPLOYCTL_REDIS_URL"]}
    if settings.mqtt_url is None and record.get("DEPLOYCTL_MQTT_URL"):
        update["mqtt_url"] = record["DEPLOYCTL_MQTT_URL"]
    return settings.model_copy(update=update)
