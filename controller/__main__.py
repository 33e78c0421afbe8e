"""``python -m controller`` is ``deployctl``."""

from controller.cli._app import main

main()
