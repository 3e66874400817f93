"""What every action adapter provides. Adding an adapter is one module and one registry line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class FieldProblem:
    field: str
    message: str


@dataclass(frozen=True)
class ActionContext:
    trace_id: str
    user_id: str | None
    step: int  # 0-based index of the step in the workflow
    attempt: int  # 1-based


class ActionFailed(Exception):
    """The action ran and failed. `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Action(Protocol):
    name: ClassVar[str]
    required: ClassVar[tuple[str, ...]]

    def validate(self, fields: dict[str, Any]) -> list[FieldProblem]:
        """Problems with the step's fields; pure, no I/O. Empty when the step can run."""
        ...

    def run(self, fields: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        """Do it; return a JSON-serialisable output. Raise ActionFailed on failure."""
        ...
