"""Reading settings a trace recorded, whatever version wrote them: the ones since removed are dropped.

The user-facing config models refuse an unknown key (`extra="forbid"`: a misspelt setting is an error,
not a silent default). A trace, though, records every setting its version had, and one since removed
would make that trace unreadable. `known_settings` drops such keys explicitly, for the caller to warn
about, in exactly the models that ignored unknown keys before they were refused, so a replay reads a
recorded config as it did then; the approval policy never ignored one (a rule with a dropped key would
cover more calls than it was written for), and still refuses it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["RecordedSettingsWarning", "known_settings"]


class RecordedSettingsWarning(UserWarning):
    """A recorded config held settings this version does not have; they were dropped."""


def known_settings(model: type[BaseModel], recorded: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`recorded` without the keys `model` (and the config models nested in it) has no field for, and
    those keys, dotted (`budget.max_wall`)."""
    dropped: list[str] = []
    return _known(model, recorded, "", dropped), dropped


def _known(
    model: type[BaseModel], recorded: dict[str, Any], where: str, dropped: list[str]
) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in recorded.items():
        field = model.model_fields.get(key)
        if field is None:
            dropped.append(where + key)
            continue
        nested = field.annotation
        # Only a field that is always a config model (`budget`, `sampling`, ...): an optional one
        # (`approval`) is a policy, which never ignored unknown keys.
        if isinstance(nested, type) and issubclass(nested, BaseModel) and isinstance(value, dict):
            value = _known(nested, value, f"{where}{key}.", dropped)
        kept[key] = value
    return kept
