"""The communicator: messages, their definitions, backends and (later) the router.

This package is the lowest layer of deployctl: it imports nothing else of ours.
"""

from communicator._backoff import keep_trying
from communicator._broker import EmbeddedBroker, write_password_file
from communicator._client import Client
from communicator._codec import (
    MAX_MESSAGE_BYTES,
    decode,
    encode,
    format_json,
    format_line,
    parse_json,
    parse_line,
)
from communicator._daemon import main as communicatord
from communicator._definitions import (
    MessageDefinition,
    MessageDefinitions,
    Override,
    ParameterDefinition,
    Problem,
)
from communicator._errors import (
    BackendError,
    ClientError,
    ConfigError,
    DefinitionError,
    DeployctlError,
    MessageError,
    RegistrationRefused,
    RegistryError,
    RequestFailed,
)
from communicator._events import Event, EventType, parse_event
from communicator._keys import Keys
from communicator._measures import Measurements, Totals
from communicator._message import Message
from communicator._mqtt import broker_url, mqtt_client, wait_for_broker
from communicator._outcomes import (
    FailureRecord,
    InvalidationPolicy,
    OutcomeKind,
    OutcomeResult,
    VersionInfo,
    VersionState,
    VersionStatus,
)
from communicator._passwords import (
    AuthResult,
    AuthStatus,
    PasswordStore,
    ThrottlePolicy,
    hash_password,
    verify_password,
)
from communicator._plans import (
    Mirror,
    PlanStore,
    Pool,
    RoutePlan,
    routed_weights,
    traffic_shares,
    with_mirror,
)
from communicator._redis import EmbeddedRedis, connect_redis, redis_backend
from communicator._registry import InstanceInfo, Registry
from communicator._router import Router, RouterConfig
from communicator._services import (
    ServiceDefinition,
    load_service_definition,
    load_service_definitions,
)
from communicator._settings import Settings, masked
from communicator._topics import Topics
from communicator._validators import Validator, parse_duration, parse_timestamp
from communicator._version import __version__

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AuthResult",
    "AuthStatus",
    "BackendError",
    "Client",
    "ClientError",
    "ConfigError",
    "DefinitionError",
    "DeployctlError",
    "EmbeddedBroker",
    "EmbeddedRedis",
    "Event",
    "EventType",
    "FailureRecord",
    "InstanceInfo",
    "InvalidationPolicy",
    "Keys",
    "Measurements",
    "Message",
    "MessageDefinition",
    "MessageDefinitions",
    "MessageError",
    "Mirror",
    "OutcomeKind",
    "OutcomeResult",
    "Override",
    "ParameterDefinition",
    "PasswordStore",
    "PlanStore",
    "Pool",
    "Problem",
    "RegistrationRefused",
    "Registry",
    "RegistryError",
    "RequestFailed",
    "RoutePlan",
    "Router",
    "RouterConfig",
    "ServiceDefinition",
    "Settings",
    "ThrottlePolicy",
    "Topics",
    "Totals",
    "Validator",
    "VersionInfo",
    "VersionState",
    "VersionStatus",
    "__version__",
    "broker_url",
    "communicatord",
    "connect_redis",
    "decode",
    "encode",
    "format_json",
    "format_line",
    "hash_password",
    "keep_trying",
    "load_service_definition",
    "load_service_definitions",
    "masked",
    "mqtt_client",
    "parse_duration",
    "parse_event",
    "parse_json",
    "parse_line",
    "parse_timestamp",
    "redis_backend",
    "routed_weights",
    "traffic_shares",
    "verify_password",
    "wait_for_broker",
    "with_mirror",
    "write_password_file",
]
