"""A service instance in its own process, driven by the tests through stdin/stdout.

Run as ``python -m tests.communicator.service_main SERVICE VERSION [options]`` with
the DEPLOYCTL_* environment pointing at the broker, Redis and prefixes. It
prints one JSON object per line (``ready``, ``refused``, ``received``, ``reply``,
``failed``) and obeys JSON commands read from stdin (``send``, ``request``,
``fail``, ``crash``, ``quit``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from typing import Any

from communicator import Client, ClientError, Message, RegistrationRefused, parse_line

#: Commands from the communicator that inform and must not be answered.
INFORMATION = {"STATUS", "TRANSMISSION_REPORT", "SERVICE_UNAVAILABLE", "UNKNOWN", "INVALID"}


def say(event: str, **data: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def offset_clock() -> None:
    """Shift this process's wall clock by ``TEST_CLOCK_OFFSET`` seconds (without libfaketime)."""
    offset = float(os.environ.get("TEST_CLOCK_OFFSET") or 0)
    if offset:
        real = time.time
        time.time = lambda: real() + offset


async def main() -> None:
    offset_clock()
    parser = argparse.ArgumentParser()
    parser.add_argument("service")
    parser.add_argument("version")
    parser.add_argument("--commands", default="")
    parser.add_argument("--server", default="test_server")
    parser.add_argument("--zone", default="")
    parser.add_argument("--password")
    parser.add_argument("--client-id")
    parser.add_argument("--instance")
    parser.add_argument("--behaviour", choices=["reply", "error", "silent"], default="reply")
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="share of requests answered ERROR"
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each handler sleeps")
    parser.add_argument("--by", help="the reply's by= (default: the version)")
    parser.add_argument("--tag", help="add tag=<this> to every reply (a real difference)")
    parser.add_argument("--noisy", action="store_true", help="add at=<time> to every reply (noise)")
    args = parser.parse_args()

    async def handle(message: Message) -> Message | None:
        say("received", message=message.model_dump(), at=time.time())
        if args.behaviour == "silent" or message.command in INFORMATION:
            return None
        if args.delay:
            await asyncio.sleep(args.delay)
        if args.behaviour == "error" or random.random() < args.fail_rate:
            return message.reply("ERROR", reason="failing on purpose")
        extra = {"tag": args.tag} if args.tag is not None else {}
        if args.noisy:
            extra["at"] = f"{time.time():.6f}"
        return message.reply("DONE", by=args.by or args.version, **extra)

    commands = [c for c in args.commands.split(",") if c]
    client = Client(
        args.service,
        args.version,
        commands=commands,
        handlers=dict.fromkeys(commands, handle),
        server=args.server,
        zone=args.zone,
        password=args.password,
        client_id=args.client_id,
        instance=args.instance,
        register_timeout=5,
        concurrency=8,
    )
    try:
        await client.__aenter__()
    except RegistrationRefused as exc:
        say("refused", reason=exc.reason, retry_after=exc.retry_after)
        return
    say("ready", client_id=client.client_id)
    tally: dict[str, Any] = {"sent": 0, "ok": 0, "failed": 0}
    load: asyncio.Task[None] | None = None
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while line := await reader.readline():
        order = json.loads(line)
        if "send" in order:
            await client.send(parse_line(order["send"]))
            say("sent")
        elif "request" in order:
            try:
                answer = await client.request(
                    parse_line(order["request"]), timeout=order.get("timeout", 5)
                )
                say("reply", message=answer.model_dump())
            except ClientError as exc:  # RequestFailed, or not connected
                say("failed", error=str(exc))
        elif "burst" in order:  # {"burst": "svc/CMD", "count": n[, "rate": r, "stamp": true]}
            glue = ";" if " " in order["burst"] else " "
            pause = 1 / order["rate"] if order.get("rate") else 0.0  # else as fast as possible
            for seq in range(order["count"]):
                stamp = f";sent={time.time():.6f}" if order.get("stamp") else ""
                await client.send(parse_line(f"{order['burst']}{glue}seq={seq}{stamp}"))
                if pause:
                    await asyncio.sleep(pause)
            say("sent")
        elif "load" in order:  # {"load": "svc/CMD", "rate": n}: requests until stop_load
            load = asyncio.create_task(generate_load(client, order["load"], order["rate"], tally))
        elif "stop_load" in order:
            if load is not None:
                load.cancel()
            say("load_stopped", **tally)
        elif "busy" in order:  # {"busy": true|false, "for": "5s"}: BUSY to the communicator
            parameters = {"busy": "true" if order["busy"] else "false"}
            if "for" in order:
                parameters["for"] = order["for"]
            await client.send(Message(command="BUSY", parameters=parameters))
            say("sent")
        elif "fail" in order:
            await client.report_failure(order["fail"])
            say("sent")
        elif "crash" in order:
            os._exit(1)  # no UNREGISTER, no clean disconnect: the broker sends the will
        elif "quit" in order:
            break
    await client.__aexit__(None, None, None)
    say("bye")


async def generate_load(client: Client, line: str, rate: float, tally: dict[str, Any]) -> None:
    """Requests at ``rate`` per second, each in its own task; counts what comes back."""

    async def one() -> None:
        try:
            await client.request(parse_line(line), timeout=2)
            tally["ok"] += 1
        except ClientError as exc:
            tally["failed"] += 1
            if len(errors) < 5:
                errors.append(f"{time.time():.3f} {exc}")

    errors = tally.setdefault("errors", [])  # type: ignore[arg-type]
    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            tally["sent"] += 1
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / rate)
    finally:
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
