"""Run every benchmark in bench/ (``make bench``); each prints its own ratios.

``python -m bench bluegreen reaction`` runs only those whose file name
contains one of the words given.

Unless ``DEPLOYCTL_BENCH_MQTT_URL`` names a broker, the benchmarks run against
a Mosquitto of their own configured as ``deployctl broker-config`` recommends
for production (``set_tcp_nodelay true``). Mosquitto's default leaves Nagle's
algorithm on, which adds about 10 ms to small QoS 0 deliveries.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).parent


@contextlib.contextmanager
def production_broker() -> Iterator[str | None]:
    """A loopback Mosquitto with set_tcp_nodelay, or ``None`` when one is given or missing."""
    if os.environ.get("DEPLOYCTL_BENCH_MQTT_URL") or not shutil.which("mosquitto"):
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="bench-broker-"))
    config = folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nuser root\n"
    )
    process = subprocess.Popen(["mosquitto", "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.05)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def main(names: list[str]) -> int:
    """Run every benchmark, or those whose file name contains one of ``names``."""
    scripts = [
        script
        for script in sorted(HERE.glob("bench_*.py"))
        if not names or any(name in script.stem for name in names)
    ]
    if not scripts:
        print(f"no benchmark matches {' '.join(names)}", file=sys.stderr)
        return 2
    failed = 0
    with production_broker() as url:
        env = dict(os.environ)
        if url is not None:
            env["DEPLOYCTL_BENCH_MQTT_URL"] = url
            print(f"broker: own Mosquitto at {url} with set_tcp_nodelay true", flush=True)
        for script in scripts:
            print(f"== {script.name}", flush=True)
            failed += subprocess.call([sys.executable, str(script)], env=env) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
