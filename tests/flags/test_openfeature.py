"""The OpenFeature provider, used through the OpenFeature API as a service would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from communicator import Settings
from flags import Flag, FlagClient
from flags.openfeature import PROVIDER_NAME, DeployctlProvider
from tests.conftest import launch_mosquitto
from tests.flags.conftest import OwnFlagBroker

HELP = "Shows the new checkout; if orders fail, switch it off."
HELP_URI = "https://wiki.example.com/flags/new-checkout"


def flag(variants: dict[str, object], default: str, **more: object) -> dict[str, object]:
    """A flagd flag definition with help and help_uri in its metadata."""
    return {
        "state": "ENABLED",
        "variants": variants,
        "defaultVariant": default,
        **more,
        "metadata": {"help": HELP, "help_uri": HELP_URI, "owner": "team-checkout"},
    }


FLAGS = {
    "new-checkout": flag({"on": True, "off": False}, "off"),
    "greeting": flag(
        {"hello": "Hello", "hi": "Hi"},
        "hello",
        targeting={"if": [{"==": [{"var": "country"}, "au"]}, "hi", None]},
    ),
    "retries": flag({"few": 2, "many": 7}, "many"),
    "ratio": flag({"low": 0.25, "high": 0.75}, "low"),
    "limits": flag({"small": {"rps": 10}, "big": {"rps": 100}}, "big"),
    "old-page": {**flag({"on": True, "off": False}, "on"), "state": "DISABLED"},
}


@pytest.fixture
async def client(settings: Settings, tmp_path: Path) -> AsyncIterator[OpenFeatureClient]:
    """An OpenFeature client whose provider is deployctl's, synced with the broker."""
    bootstrap = tmp_path / "flags.json"
    bootstrap.write_text(json.dumps({"flags": FLAGS}))
    async with FlagClient(settings=settings, bootstrap=bootstrap) as flags:
        assert await flags.wait_synced(timeout=5)
        api.set_provider(DeployctlProvider(flags))
        try:
            yield api.get_client()
        finally:
            api.clear_providers()


@pytest.mark.usefixtures("client")
async def test_provider_metadata_names_deployctl() -> None:
    """The provider reports its name through the API."""
    assert api.get_provider_metadata().name == PROVIDER_NAME


async def test_boolean_resolves_value_variant_and_static_reason(
    client: OpenFeatureClient,
) -> None:
    """A flag without targeting gives its default variant, reason STATIC."""
    details = client.get_boolean_details("new-checkout", True)
    assert (details.value, details.variant, details.reason) == (False, "off", Reason.STATIC)
    assert details.error_code is None


async def test_targeting_match_uses_the_evaluation_context(client: OpenFeatureClient) -> None:
    """Context attributes reach the targeting: a match says TARGETING_MATCH."""
    context = EvaluationContext(targeting_key="user-1", attributes={"country": "au"})
    details = client.get_string_details("greeting", "?", context)
    assert (details.value, details.variant, details.reason) == ("Hi", "hi", Reason.TARGETING_MATCH)
    elsewhere = client.get_string_details("greeting", "?", EvaluationContext("user-2", {}))
    assert (elsewhere.value, elsewhere.reason) == ("Hello", Reason.DEFAULT)


async def test_numbers_and_objects_resolve_with_their_types(client: OpenFeatureClient) -> None:
    """Integer, float and object flags come back typed."""
    assert client.get_integer_details("retries", 0).value == 7
    ratio = client.get_float_details("ratio", 0.0)
    assert (ratio.value, ratio.variant) == (0.25, "low")
    integer_as_float = client.get_float_details("retries", 0.0)
    assert integer_as_float.value == 7.0
    assert isinstance(integer_as_float.value, float)
    assert client.get_object_details("limits", {}).value == {"rps": 100}


async def test_disabled_flag_serves_the_callers_default(client: OpenFeatureClient) -> None:
    """A disabled flag gives the caller's default, reason DISABLED, no variant."""
    details = client.get_boolean_details("old-page", False)
    assert (details.value, details.variant, details.reason) == (False, None, Reason.DISABLED)


async def test_missing_flag_is_flag_not_found(client: OpenFeatureClient) -> None:
    """An unknown key gives the default with FLAG_NOT_FOUND and a message."""
    details = client.get_boolean_details("no-such-flag", True)
    assert details.value is True
    assert details.reason == Reason.ERROR
    assert details.error_code == ErrorCode.FLAG_NOT_FOUND
    assert details.error_message is not None
    assert "no-such-flag" in details.error_message


async def test_type_mismatch_serves_the_default(client: OpenFeatureClient) -> None:
    """Asking a boolean flag for a string is TYPE_MISMATCH, and the default is served."""
    details = client.get_string_details("new-checkout", "fallback")
    assert details.value == "fallback"
    assert details.reason == Reason.ERROR
    assert details.error_code == ErrorCode.TYPE_MISMATCH


async def test_flag_metadata_carries_help_and_help_uri(client: OpenFeatureClient) -> None:
    """help, help_uri and the rest of the flag's metadata reach flag_metadata."""
    details = client.get_boolean_details("new-checkout", False)
    assert details.flag_metadata["help"] == HELP
    assert details.flag_metadata["help_uri"] == HELP_URI
    assert details.flag_metadata["owner"] == "team-checkout"


async def test_offline_client_reports_stale(tmp_path: Path) -> None:
    """Without a broker the bootstrap flags are served with reason STALE."""
    bootstrap = tmp_path / "flags.json"
    bootstrap.write_text(json.dumps({"flags": FLAGS}))
    offline = Settings(mqtt_url="mqtt://127.0.0.1:1", topic_prefix="test/offline/")
    async with FlagClient(settings=offline, bootstrap=bootstrap) as flags:
        api.set_provider(DeployctlProvider(flags))
        try:
            details = api.get_client().get_boolean_details("new-checkout", True)
        finally:
            api.clear_providers()
    assert (details.value, details.variant, details.reason) == (False, "off", Reason.STALE)


async def test_provider_events_follow_the_broker(
    own_flag_broker: OwnFlagBroker, tmp_path: Path
) -> None:
    """READY once in sync, CONFIGURATION_CHANGED with the flag, STALE offline, READY back."""
    store = own_flag_broker.store
    await store.put(Flag.from_flagd("new-checkout", FLAGS["new-checkout"]), who="test")
    loop = asyncio.get_running_loop()
    heard: list[tuple[ProviderEvent, list[str]]] = []
    news = asyncio.Event()

    def record(kind: ProviderEvent, details: EventDetails) -> None:
        heard.append((kind, details.flags_changed or []))
        news.set()

    def hearing(kind: ProviderEvent) -> Callable[[EventDetails], None]:
        def handler(details: EventDetails) -> None:
            # OpenFeature runs handlers in a worker thread: hand each event to our loop.
            loop.call_soon_threadsafe(record, kind, details)

        return handler

    async def hear(kind: ProviderEvent, after: int) -> int:
        """Wait for an event of ``kind`` heard after the first ``after``; its position."""
        async with asyncio.timeout(15):
            while True:
                for n, (seen, _) in enumerate(heard[after:], after):
                    if seen is kind:
                        return n
                news.clear()
                await news.wait()

    handlers = {
        kind: hearing(kind)
        for kind in (
            ProviderEvent.PROVIDER_READY,
            ProviderEvent.PROVIDER_CONFIGURATION_CHANGED,
            ProviderEvent.PROVIDER_STALE,
        )
    }
    try:
        async with FlagClient(settings=own_flag_broker.settings) as flags:
            api.set_provider(DeployctlProvider(flags))
            for kind, handler in handlers.items():
                api.add_handler(kind, handler)
            assert await flags.wait_synced(5)
            ready = await hear(ProviderEvent.PROVIDER_READY, 0)
            on = {**FLAGS["new-checkout"], "defaultVariant": "on"}
            await store.put(Flag.from_flagd("new-checkout", on), who="test", why="turn it on")
            changed = await hear(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, ready)
            assert heard[changed][1] == ["new-checkout"]
            await asyncio.to_thread(own_flag_broker.server.stop)
            stale = await hear(ProviderEvent.PROVIDER_STALE, changed)
            details = api.get_client().get_boolean_details("new-checkout", False)
            assert (details.value, details.reason) == (True, Reason.STALE)
            port = own_flag_broker.port
            again = launch_mosquitto("flags-broker-again", tmp_path, port, "allow_anonymous true")
            try:
                await hear(ProviderEvent.PROVIDER_READY, stale)
            finally:
                again.stop()
    finally:
        for kind, handler in handlers.items():
            api.remove_handler(kind, handler)
        api.clear_providers()
