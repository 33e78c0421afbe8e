"""``python -m communicator`` is ``communicatord``."""

from communicator.router._daemon import run

run()
