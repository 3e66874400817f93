"""The action registry: action_type -> adapter. Adding an adapter is one module and one line here."""

from __future__ import annotations

from bhiv.executor.actions.ai import AiAction
from bhiv.executor.actions.base import Action, ActionContext, ActionFailed, FieldProblem
from bhiv.executor.actions.email import EmailAction
from bhiv.executor.actions.reminder import ReminderAction
from bhiv.executor.actions.task import TaskAction
from bhiv.executor.actions.whatsapp import WhatsAppAction

_ADAPTERS: tuple[Action, ...] = (
    TaskAction(),
    EmailAction(),
    WhatsAppAction(),
    AiAction(),
    ReminderAction(),
)

REGISTRY: dict[str, Action] = {adapter.name: adapter for adapter in _ADAPTERS}


def get_action(name: str) -> Action | None:
    return REGISTRY.get(name)


__all__ = ["REGISTRY", "Action", "ActionContext", "ActionFailed", "FieldProblem", "get_action"]
