"""An OpenFeature provider for deployctl flags: ``flags.openfeature.DeployctlProvider``.

Services that already speak OpenFeature keep their code and swap the provider::

    from openfeature import api
    from flags import FlagClient
    from flags.openfeature import DeployctlProvider

    async with FlagClient(settings=settings, bootstrap=Path("flags.json")) as flags:
        api.set_provider(DeployctlProvider(flags))
        client = api.get_client()
        details = client.get_boolean_details("new-checkout", False, context)

The provider evaluates in-process through a running :class:`~flags.FlagClient`,
so a resolution never waits on the network. What OpenFeature reports maps one to
one from deployctl's :class:`~flags.Resolution`: value, variant, reason
(``STALE`` while the broker is out of reach), error code and message, and the
flag's metadata with ``help`` and ``help_uri`` (and owner, tags, expires …) in
``flag_metadata``, so whoever sees a flag misbehave also sees what to do.

Provider events follow the client: ``PROVIDER_READY`` when the broker's flags
are in (again), ``PROVIDER_CONFIGURATION_CHANGED`` with ``flags_changed`` on
each change, ``PROVIDER_STALE`` when the broker goes away.

This module needs the ``openfeature-sdk`` package; the rest of :mod:`flags` does not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode as OpenFeatureErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType
from openfeature.flag_evaluation import Reason as OpenFeatureReason
from openfeature.provider import AbstractProvider, Metadata

from flags._client import FlagClient, FlagEvent
from flags._evaluate import ErrorCode, FlagType, Reason, Resolution

__all__ = ["PROVIDER_NAME", "DeployctlProvider"]

PROVIDER_NAME = "deployctl"
"""The name the provider reports in its metadata."""

# Built from our enums, so a reason or code OpenFeature lacks fails at import, not at runtime.
_REASONS: Mapping[Reason, OpenFeatureReason] = {
    reason: OpenFeatureReason(reason.value) for reason in Reason
}
_ERROR_CODES: Mapping[ErrorCode, OpenFeatureErrorCode] = {
    code: OpenFeatureErrorCode(code.value) for code in ErrorCode
}

ObjectValue = Sequence[FlagValueType] | Mapping[str, FlagValueType]


def context_data(context: EvaluationContext | None) -> dict[str, Any]:
    """An OpenFeature evaluation context as flagd's targeting sees it (``targetingKey`` added)."""
    if context is None:
        return {}
    data: dict[str, Any] = dict(context.attributes)
    if context.targeting_key is not None:
        data["targetingKey"] = context.targeting_key
    return data


def resolution_details(resolution: Resolution) -> FlagResolutionDetails[Any]:
    """A deployctl resolution in OpenFeature's terms."""
    return FlagResolutionDetails(
        value=resolution.value,
        error_code=None if resolution.error_code is None else _ERROR_CODES[resolution.error_code],
        error_message=resolution.error_message,
        reason=_REASONS[resolution.reason],
        variant=resolution.variant,
        flag_metadata=dict(resolution.metadata),
    )


class DeployctlProvider(AbstractProvider):
    """The OpenFeature provider of deployctl flags, evaluated by a running :class:`FlagClient`.

    The client's lifetime is the caller's: enter it (``async with``) before
    evaluating and exit it on shutdown; the provider neither starts nor stops it.

    Args:
        client: The flag client to evaluate with.
    """

    def __init__(self, client: FlagClient) -> None:
        super().__init__()
        self.client = client
        self._stop_listening: Callable[[], None] | None = None

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Follow the client's events (OpenFeature calls this when the provider is set)."""
        if self._stop_listening is None:
            self._stop_listening = self.client.add_listener(self._on_event)

    def shutdown(self) -> None:
        """Stop following the client (the client itself keeps running: it is the caller's)."""
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None

    def _on_event(self, event: FlagEvent) -> None:
        if event.kind == "ready":
            self.emit_provider_ready(ProviderEventDetails())
        elif event.kind == "changed":
            self.emit_provider_configuration_changed(
                ProviderEventDetails(flags_changed=list(event.keys))
            )
        else:
            self.emit_provider_stale(
                ProviderEventDetails(message="broker unreachable: serving the last known flags")
            )

    def get_metadata(self) -> Metadata:
        """The provider's name, ``deployctl``."""
        return Metadata(name=PROVIDER_NAME)

    def _resolve(
        self,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None,
        expected_type: FlagType,
    ) -> FlagResolutionDetails[Any]:
        resolution = self.client.resolve(
            flag_key, default_value, context_data(evaluation_context), expected_type
        )
        return resolution_details(resolution)

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Resolve a boolean flag."""
        return self._resolve(flag_key, default_value, evaluation_context, FlagType.BOOLEAN)

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        """Resolve a string flag."""
        return self._resolve(flag_key, default_value, evaluation_context, FlagType.STRING)

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        """Resolve an integer flag (a non-integral number is a ``TYPE_MISMATCH``)."""
        return self._resolve(flag_key, default_value, evaluation_context, FlagType.INTEGER)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        """Resolve a numeric flag as a float (integers are widened, as flagd does)."""
        return self._resolve(flag_key, default_value, evaluation_context, FlagType.FLOAT)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: ObjectValue,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[ObjectValue]:
        """Resolve an object (JSON object or array) flag."""
        return self._resolve(flag_key, default_value, evaluation_context, FlagType.OBJECT)
