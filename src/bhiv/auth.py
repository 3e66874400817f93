"""Bearer-token authentication with per-requester scopes.

Tokens are random and high-entropy, so a plain sha256 is a sound stored form; only hashes are
held in memory and comparison is constant-time over every known hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bhiv.errors import Forbidden, Unauthorized
from bhiv.ratelimit import Limit, RateLimiter

ALL_SCOPES = frozenset({"events:write", "events:read", "karma:read", "karma:write", "workflows:execute"})


@dataclass(frozen=True)
class Principal:
    requester_id: str
    scopes: frozenset[str]
    authenticated: bool = True


def _requesters_doc(path: str | None) -> dict[str, Any]:
    path = path or os.environ.get("BHIV_REQUESTERS_FILE")
    if path:
        text = Path(path).read_text(encoding="utf-8")
    else:
        text = resources.files("bhiv").joinpath("requesters.yaml").read_text(encoding="utf-8")
    doc: dict[str, Any] = yaml.safe_load(text) or {}
    return doc


def load_requesters(path: str | None = None) -> dict[str, frozenset[str]]:
    """Requester id -> scopes, from BHIV_REQUESTERS_FILE or the packaged requesters.yaml."""
    doc = _requesters_doc(path)
    return {
        str(rid): frozenset(str(s) for s in (spec or {}).get("scopes", []))
        for rid, spec in (doc.get("requesters") or {}).items()
    }


def load_rate_limiter(path: str | None = None) -> RateLimiter | None:
    """The per-requester write/execute limits of requesters.yaml; None when BHIV_RATE_LIMITS=off
    (benchmarks and contract runs measure the services, not the limiter)."""
    if os.environ.get("BHIV_RATE_LIMITS", "").lower() == "off":
        return None
    doc = _requesters_doc(path)
    default = Limit.parse((doc.get("rate_limits") or {}).get("default"), "rate_limits.default")
    limits: dict[str, Limit | None] = {}
    for rid, spec in (doc.get("requesters") or {}).items():
        if isinstance(spec, dict) and "rate_limit" in spec:
            limits[str(rid)] = Limit.parse(spec["rate_limit"], f"requesters.{rid}.rate_limit")
    return RateLimiter(limits, default)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "bhiv_" + secrets.token_urlsafe(32)


class Authenticator:
    def __init__(
        self,
        requesters: dict[str, frozenset[str]],
        token_hashes: dict[str, str],
        *,
        auth_disabled: bool = False,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._requesters = requesters
        self._hashes = [(rid, h.lower()) for rid, h in token_hashes.items()]
        self.auth_disabled = auth_disabled
        self._limiter = limiter

    def throttle(self, principal: Principal, scope: str, cost: int = 1) -> None:
        """Spend the principal's budget for `scope` (429 TooManyRequests when it is empty)."""
        if self._limiter is not None:
            self._limiter.take(principal.requester_id, cost, operation=scope)

    def authenticate(self, authorization: str | None, scope: str) -> Principal:
        """The caller behind the Authorization header, if it holds `scope` (401/403 otherwise)."""
        if self.auth_disabled:
            return Principal("anonymous", ALL_SCOPES, authenticated=False)
        token = _bearer_token(authorization)
        requester_id = self._match(token)
        if requester_id is None:
            raise Unauthorized("Invalid or unknown bearer token", code="invalid_token")
        scopes = self._requesters.get(requester_id)
        if scopes is None:
            raise Forbidden(f"Requester '{requester_id}' is not a known requester", code="unknown_requester")
        if scope not in scopes:
            raise Forbidden(
                f"Requester '{requester_id}' lacks the scope '{scope}'",
                code="insufficient_scope",
                required_scope=scope,
            )
        return Principal(requester_id, scopes)

    def authenticate_any(self, authorization: str | None) -> Principal:
        """The caller behind the Authorization header, whatever its scopes (401 without a valid token)."""
        if self.auth_disabled:
            return Principal("anonymous", ALL_SCOPES, authenticated=False)
        requester_id = self._match(_bearer_token(authorization))
        if requester_id is None:
            raise Unauthorized("Invalid or unknown bearer token", code="invalid_token")
        return Principal(requester_id, self._requesters.get(requester_id, frozenset()))

    def requester_for_write(self, principal: Principal, claimed: str) -> str:
        """The requester a write is recorded under: always the token's owner."""
        if principal.authenticated:
            if claimed != principal.requester_id:
                raise Forbidden(
                    f"The body names requester '{claimed}' but the token belongs to '{principal.requester_id}'",
                    code="requester_mismatch",
                    field="requester_id",
                )
            return claimed
        # Auth off (loopback, legacy clients): the body's requester is trusted but must be known.
        if claimed not in self._requesters:
            raise Forbidden(f"Unknown requester '{claimed}'", code="unknown_requester", field="requester_id")
        return claimed

    def requester_for_read(self, principal: Principal, claimed: str, scope: str) -> str:
        """A read that names its requester (the original `?requester_id=`): the token's owner,
        or, with auth off, a known requester holding `scope` (403 otherwise)."""
        if principal.authenticated:
            return self.requester_for_write(principal, claimed)
        if scope not in self._requesters.get(claimed, frozenset()):
            raise Forbidden(
                f"Requester '{claimed}' may not read here (needs the scope '{scope}')",
                code="unauthorized_requester",
                field="requester_id",
            )
        return claimed

    def _match(self, token: str) -> str | None:
        digest = hash_token(token)
        found: str | None = None
        for requester_id, known in self._hashes:
            if hmac.compare_digest(digest, known):
                found = requester_id
        return found


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("Missing Authorization header (expected 'Bearer <token>')", code="missing_token")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'", code="invalid_token")
    return token.strip()


def _token_hashes_from_env() -> dict[str, str]:
    raw = os.environ.get("BHIV_TOKEN_HASHES")
    if raw:
        return {str(k): str(v) for k, v in json.loads(raw).items()}
    creds = os.environ.get("BHIV_CREDENTIALS_FILE")
    if creds:
        tokens: dict[str, Any] = json.loads(Path(creds).read_text(encoding="utf-8"))
        return {rid: hash_token(str(tok)) for rid, tok in tokens.items()}
    parameter = os.environ.get("BHIV_TOKEN_HASHES_PARAMETER")
    if parameter:
        from bhiv.storage import aws

        value = aws.client("ssm").get_parameter(Name=parameter, WithDecryption=True)
        return {str(k): str(v) for k, v in json.loads(value["Parameter"]["Value"]).items()}
    return {}


@lru_cache(maxsize=1)
def authenticator_from_env() -> Authenticator:
    return Authenticator(
        load_requesters(),
        _token_hashes_from_env(),
        auth_disabled=os.environ.get("BHIV_AUTH_DISABLED", "") == "1",
        limiter=load_rate_limiter(),
    )
