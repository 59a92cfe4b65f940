"""Events the escalation app publishes, through the same after-commit seam as the core."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True)
class FlagRaised:
    conversation_id: UUID
    flag_id: int
    reason: str
    new: bool  # the conversation did not need attention before this flag
