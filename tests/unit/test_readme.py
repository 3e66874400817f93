"""The README is for users and must stay true: drift tests against the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bhiv.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _up_options() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    up = sub.choices["up"]  # type: ignore[index]
    return {opt for action in up._actions for opt in action.option_strings if opt.startswith("--") and opt != "--help"}


def test_every_bhiv_up_flag_is_in_the_readme_table() -> None:
    rows = set(re.findall(r"^\| `(--[a-z-]+)` \|", README, re.M))
    assert _up_options() <= rows, _up_options() - rows


def test_the_requesters_table_matches_requesters_yaml() -> None:
    configured = yaml.safe_load((ROOT / "src/bhiv/requesters.yaml").read_text(encoding="utf-8"))["requesters"]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| ((?:[a-z]+:[a-z]+(?:, )?)+) \|$", README, re.M))
    assert {rid: sorted(spec["scopes"]) for rid, spec in configured.items()} == {
        rid: sorted(scopes.split(", ")) for rid, scopes in rows.items()
    }


def test_links_stay_inside_the_repository() -> None:
    for target in re.findall(r"\]\(([^)]+)\)", README):
        assert "://" not in target and not target.startswith(".."), target
        assert (ROOT / target.split("#")[0]).exists(), target
