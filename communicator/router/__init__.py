"""The router: the communicator daemon that routes each message to an instance.

``Router`` owns the MQTT loop; its collaborators (control messages, requests,
mirroring, partition ownership) each get only what they use.
"""

from communicator.router._daemon import main as communicatord
from communicator.router._daemon import run
from communicator.router._health import reporting_health
from communicator.router._router import Router, RouterConfig
from communicator.router._shadow_compare import COUNTS as MIRROR_COUNTS
from communicator.router._shadow_compare import OUTCOMES as MIRROR_OUTCOMES

__all__ = [
    "MIRROR_COUNTS",
    "MIRROR_OUTCOMES",
    "Router",
    "RouterConfig",
    "communicatord",
    "reporting_health",
    "run",
]
