"""The backends: the MQTT link, Redis, the embedded servers, settings, retries, keys and topics.

Everything that talks to a server lives here, behind small functions and classes;
Redis keys and MQTT topics are named in one place each (``Keys``, ``Topics``).
"""

from communicator.backends._backoff import backoff_delay, being_cancelled, keep_trying
from communicator.backends._broker import EmbeddedBroker, write_password_file
from communicator.backends._embedded_redis import EmbeddedRedis
from communicator.backends._keys import Keys
from communicator.backends._link import MAX_PACKET_SIZE
from communicator.backends._logs import Throttled
from communicator.backends._memory_link import MemoryBroker, MemoryLink
from communicator.backends._mqtt import broker_url, mqtt_client, wait_for_broker
from communicator.backends._ntp import NtpStatus, machine_ntp, ntp_parameter
from communicator.backends._redis import connect_redis, redis_backend
from communicator.backends._replies import text
from communicator.backends._settings import Settings, masked, parse_mqtt_url
from communicator.backends._tasks import cancel_and_wait
from communicator.backends._topics import Topics

__all__ = [
    "MAX_PACKET_SIZE",
    "EmbeddedBroker",
    "EmbeddedRedis",
    "Keys",
    "MemoryBroker",
    "MemoryLink",
    "NtpStatus",
    "Settings",
    "Throttled",
    "Topics",
    "backoff_delay",
    "being_cancelled",
    "broker_url",
    "cancel_and_wait",
    "connect_redis",
    "keep_trying",
    "machine_ntp",
    "masked",
    "mqtt_client",
    "ntp_parameter",
    "parse_mqtt_url",
    "redis_backend",
    "text",
    "wait_for_broker",
    "write_password_file",
]
