"""The client: what a service embeds to register, receive and answer messages."""

from communicator.client._client import Client

__all__ = ["Client"]
