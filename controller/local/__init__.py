"""Running everything on one machine: ``deployctl up`` and ``deployctl demo``."""
