"""``python -m controller`` is ``deployctl``."""

from controller._cli import main

main()
