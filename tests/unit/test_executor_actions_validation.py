"""Every adapter's `validate`: pure checks of the step's fields, no AWS (and the registry)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bhiv.executor.actions import REGISTRY, get_action
from bhiv.executor.actions.ai import AiAction
from bhiv.executor.actions.base import Action, FieldProblem
from bhiv.executor.actions.email import EmailAction
from bhiv.executor.actions.reminder import ReminderAction, at_expression, schedule_name
from bhiv.executor.actions.task import TaskAction
from bhiv.executor.actions.whatsapp import WhatsAppAction

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)

VALID: dict[str, dict[str, Any]] = {
    "task": {"title": "Review lesson 4", "description": "before Friday", "due": "2030-06-07T17:00:00+05:30"},
    "email": {"recipient": "asha@example.org", "subject": "Your lesson", "body": "Lesson 4 is ready."},
    "whatsapp": {"recipient": "+919876543210", "message": "Lesson 4 is ready."},
    "ai": {"prompt": "Summarise lesson 4 in one sentence.", "model": "small-1"},
    "reminder": {"message": "Lesson 4 starts soon", "remind_at": "2030-06-01T13:00:00Z"},
}


def _fixed_clock() -> datetime:
    return NOW


def _adapter(name: str) -> Action:
    return ReminderAction(clock=_fixed_clock) if name == "reminder" else REGISTRY[name]


def _fields(problems: list[FieldProblem]) -> list[str]:
    return [p.field for p in problems]


# --- the registry ------------------------------------------------------------------------------


def test_registry_has_the_five_adapters_under_their_names() -> None:
    assert sorted(REGISTRY) == ["ai", "email", "reminder", "task", "whatsapp"]
    for name, action in REGISTRY.items():
        assert action.name == name
        assert get_action(name) is action
    assert get_action("sms") is None


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_fields_have_no_problems(name: str) -> None:
    assert _adapter(name).validate(dict(VALID[name])) == []


@pytest.mark.parametrize("name", sorted(VALID))
def test_each_missing_required_field_is_named(name: str) -> None:
    adapter = _adapter(name)
    assert adapter.required, name
    for field in adapter.required:
        fields = {k: v for k, v in VALID[name].items() if k != field}
        assert _fields(adapter.validate(fields)) == [field]
    assert sorted(_fields(adapter.validate({}))) == sorted(adapter.required)


@pytest.mark.parametrize("name", sorted(VALID))
def test_non_string_required_fields_are_named(name: str) -> None:
    adapter = _adapter(name)
    for field in adapter.required:
        for wrong in (42, ["x"], {"x": 1}, True):
            problems = adapter.validate({**VALID[name], field: wrong})
            assert _fields(problems) == [field]
            assert "string" in problems[0].message


@pytest.mark.parametrize("name", sorted(VALID))
def test_blank_required_fields_are_named(name: str) -> None:
    adapter = _adapter(name)
    for field in adapter.required:
        assert _fields(adapter.validate({**VALID[name], field: "   "})) == [field]


def test_extra_fields_are_ignored() -> None:
    assert TaskAction().validate({"title": "x", "priority": "high"}) == []


# --- task --------------------------------------------------------------------------------------


def test_task_title_is_at_most_500_characters() -> None:
    assert TaskAction().validate({"title": "t" * 500}) == []
    problems = TaskAction().validate({"title": "t" * 501})
    assert _fields(problems) == ["title"] and "500" in problems[0].message


def test_task_optional_fields_are_checked_when_given() -> None:
    assert TaskAction().validate({"title": "x"}) == []
    assert TaskAction().validate({"title": "x", "description": None, "due": None}) == []
    assert TaskAction().validate({"title": "x", "description": ""}) == []
    assert _fields(TaskAction().validate({"title": "x", "description": 5})) == ["description"]
    assert _fields(TaskAction().validate({"title": "x", "description": "d" * 10_001})) == ["description"]


@pytest.mark.parametrize("due", ["2030-06-07T17:00:00Z", "2030-06-07T17:00:00.5+05:30", "2030-06-07t17:00:00z"])
def test_task_due_accepts_rfc3339_date_times(due: str) -> None:
    assert TaskAction().validate({"title": "x", "due": due}) == []


@pytest.mark.parametrize(
    "due",
    [
        "2030-06-07",
        "tomorrow",
        "2030-13-01T10:00:00Z",
        "07/06/2030 17:00",
        "",
        1234,
        "2030-06-07T17:00",  # no seconds, no offset
        "2030-06-07T17:00:00",  # no offset: a local time of an unknown zone
        "2030-06-07 17:00:00+00:00",  # a space for the T
    ],
)
def test_task_due_rejects_anything_else(due: Any) -> None:
    assert _fields(TaskAction().validate({"title": "x", "due": due})) == ["due"]


# --- email -------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["a@example.org", "first.last+tag@mail.example.co.in", "x_y-z@sub.domain.io"])
def test_email_accepts_addresses(address: str) -> None:
    assert EmailAction().validate({**VALID["email"], "recipient": address}) == []


@pytest.mark.parametrize(
    "address",
    [
        "plainaddress",
        "@example.org",
        "a@",
        "a@example",
        "a@@example.org",
        "a..b@example.org",
        ".a@example.org",
        "a@-example.org",
        "a b@example.org",
        "Asha <asha@example.org>",
        "a@example.org\n",
        "x" * 65 + "@example.org",
        "a@" + "b" * 250 + ".org",
    ],
)
def test_email_rejects_non_addresses(address: str) -> None:
    problems = EmailAction().validate({**VALID["email"], "recipient": address})
    assert _fields(problems) == ["recipient"]


def test_email_subject_is_one_line_of_at_most_998_characters() -> None:
    assert EmailAction().validate({**VALID["email"], "subject": "s" * 998}) == []
    assert _fields(EmailAction().validate({**VALID["email"], "subject": "s" * 999})) == ["subject"]
    problems = EmailAction().validate({**VALID["email"], "subject": "Hi\r\nBcc: everyone@example.org"})
    assert _fields(problems) == ["subject"] and "single line" in problems[0].message


def test_email_body_may_span_lines_but_is_bounded() -> None:
    assert EmailAction().validate({**VALID["email"], "body": "line 1\nline 2"}) == []
    assert _fields(EmailAction().validate({**VALID["email"], "body": "b" * 100_001})) == ["body"]


def test_email_reports_every_bad_field_at_once() -> None:
    problems = EmailAction().validate({"recipient": "nobody", "subject": 3})
    assert _fields(problems) == ["recipient", "subject", "body"]


# --- whatsapp ----------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["+919876543210", "+14155552671", "+4915123456789", "+1234567", "+123456789012345"])
def test_whatsapp_accepts_e164(number: str) -> None:
    assert WhatsAppAction().validate({**VALID["whatsapp"], "recipient": number}) == []


@pytest.mark.parametrize(
    "number",
    ["919876543210", "+0919876543210", "+91 98765 43210", "+91-9876543210", "+123456", "+1234567890123456", "+91abc"],
)
def test_whatsapp_rejects_other_numbers(number: str) -> None:
    problems = WhatsAppAction().validate({**VALID["whatsapp"], "recipient": number})
    assert _fields(problems) == ["recipient"] and "E.164" in problems[0].message


def test_whatsapp_message_fits_one_sns_sms_publish() -> None:
    assert WhatsAppAction().validate({**VALID["whatsapp"], "message": "m" * 1600}) == []
    problems = WhatsAppAction().validate({**VALID["whatsapp"], "message": "m" * 1601})
    assert _fields(problems) == ["message"] and "1600" in problems[0].message


# --- ai ----------------------------------------------------------------------------------------


def test_ai_prompt_is_at_most_8000_characters() -> None:
    assert AiAction().validate({"prompt": "p" * 8000}) == []
    assert _fields(AiAction().validate({"prompt": "p" * 8001})) == ["prompt"]


def test_ai_model_is_optional_but_must_be_a_name() -> None:
    assert AiAction().validate({"prompt": "p"}) == []
    assert AiAction().validate({"prompt": "p", "model": None}) == []
    for wrong in (7, "", "  ", "a\nb", "m" * 201):
        assert _fields(AiAction().validate({"prompt": "p", "model": wrong})) == ["model"], wrong


# --- reminder ----------------------------------------------------------------------------------


def test_reminder_must_be_in_the_future_by_the_injected_clock() -> None:
    action = ReminderAction(clock=_fixed_clock)
    assert action.validate({"message": "m", "remind_at": (NOW + timedelta(seconds=1)).isoformat()}) == []
    for past in (NOW, NOW - timedelta(minutes=1)):
        problems = action.validate({"message": "m", "remind_at": past.isoformat()})
        assert _fields(problems) == ["remind_at"] and "future" in problems[0].message
    # the same time is in the past for a later clock
    later = ReminderAction(clock=lambda: NOW + timedelta(hours=2))
    assert _fields(later.validate(dict(VALID["reminder"]))) == ["remind_at"]


def test_reminder_compares_instants_across_timezones() -> None:
    action = ReminderAction(clock=_fixed_clock)  # 12:00 UTC = 17:30 in India
    assert _fields(action.validate({"message": "m", "remind_at": "2030-06-01T17:00:00+05:30"})) == ["remind_at"]
    assert action.validate({"message": "m", "remind_at": "2030-06-01T18:00:00+05:30"}) == []


def test_reminder_needs_a_timezone_and_a_time() -> None:
    action = ReminderAction(clock=_fixed_clock)
    problems = action.validate({"message": "m", "remind_at": "2030-06-02T09:00:00"})
    assert _fields(problems) == ["remind_at"] and "timezone" in problems[0].message
    for wrong in ("2030-06-02", "next week", "2030-02-30T09:00:00Z", 1906000000):
        assert _fields(action.validate({"message": "m", "remind_at": wrong})) == ["remind_at"], wrong


def test_reminder_message_is_bounded() -> None:
    action = ReminderAction(clock=_fixed_clock)
    assert _fields(action.validate({**VALID["reminder"], "message": "m" * 4097})) == ["message"]


def test_the_default_reminder_clock_is_the_real_one() -> None:
    action = ReminderAction()
    assert _fields(action.validate({"message": "m", "remind_at": "2001-01-01T00:00:00Z"})) == ["remind_at"]
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert action.validate({"message": "m", "remind_at": soon}) == []


def test_schedule_names_are_deterministic_valid_and_distinct() -> None:
    import re

    names = {
        schedule_name(trace, step)
        for trace in ("t-1", "t:1", "t/1", "ü" * 10, "x" * 300, "--", "trace.with_dots")
        for step in (0, 1, 12)
    }
    assert len(names) == 21
    for name in names:
        assert re.fullmatch(r"[0-9A-Za-z_.-]{1,64}", name), name
    assert schedule_name("t-1", 0) == schedule_name("t-1", 0)


def test_at_expression_is_utc_to_the_second() -> None:
    when = datetime.fromisoformat("2030-06-01T18:00:30.900+05:30")
    assert at_expression(when) == "at(2030-06-01T12:30:30)"
