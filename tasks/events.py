"""Events a revert emits, as frozen dataclasses serialised to JSON.

Lifecycle events mirror libvirt's (VIR_DOMAIN_EVENT_STOPPED ... DEFINED with
detail FROM_SNAPSHOT) so viewers that reconnect on libvirt events can do the
same on ours; a `revert-finished` summary closes each revert.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LifecycleEvent:
    revert_id: str
    host: str
    domain: str
    domain_uuid: str
    event: str  # stopped, started, suspended, resumed, defined
    detail: str  # from-snapshot
    at: float
    type: str = "lifecycle"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RevertFinishedEvent:
    revert_id: str
    host: str
    domain: str
    domain_uuid: str
    snapshot: str
    state: str
    end_state: str | None
    at: float
    type: str = "revert-finished"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
