"""``python -m communicator`` is ``communicatord``."""

from communicator._daemon import run

run()
