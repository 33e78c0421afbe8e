"""Feature flags: flagd-compatible definitions, compiled targeting, in-process evaluation.

A :class:`Flag` follows flagd's flag definition, and every flag carries ``help``
and ``help_uri``. :class:`CompiledFlag` compiles a flag's targeting once;
:func:`evaluate` then resolves it as flagd's in-process resolver would.
"""

from flags._client import FlagClient, FlagEvent
from flags._errors import EXAMPLE_FLAG, FlagError
from flags._evaluate import CompiledFlag, ErrorCode, FlagType, Reason, Resolution, evaluate
from flags._keys import FlagKeys
from flags._model import FLAGD_SCHEMA, Flag, FlagState, flagd_document, flags_from_flagd_document
from flags._publisher import FlagPublisher
from flags._status import DEFAULT_PRIORITY, StatusFlag, StatusFlagError, StatusFlags, parse_flag_id
from flags._store import FlagConflict, FlagStore, FlagStoreError, StoredFlag
from flags._targeting import OPERATORS, Targeting, UnknownOperator, compile_targeting

__all__ = [
    "DEFAULT_PRIORITY",
    "EXAMPLE_FLAG",
    "FLAGD_SCHEMA",
    "OPERATORS",
    "CompiledFlag",
    "ErrorCode",
    "Flag",
    "FlagClient",
    "FlagConflict",
    "FlagError",
    "FlagEvent",
    "FlagKeys",
    "FlagPublisher",
    "FlagState",
    "FlagStore",
    "FlagStoreError",
    "FlagType",
    "Reason",
    "Resolution",
    "StatusFlag",
    "StatusFlagError",
    "StatusFlags",
    "StoredFlag",
    "Targeting",
    "UnknownOperator",
    "compile_targeting",
    "evaluate",
    "flagd_document",
    "flags_from_flagd_document",
    "parse_flag_id",
]
