"""Who may call a route: staff roles declared on the handler, enforced by the console's auth middleware.

A feature marks a staff-only handler with ``@requires("call_taker", "supervisor")``; citizen-facing
handlers carry no mark. The auth middleware (``hotline/console``) reads the mark from
``request.match_info.handler`` and answers 401 (not logged in) or 403 (wrong role).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from hotline.status import Status

if TYPE_CHECKING:
    from hotline.records import Case

CALL_TAKER = "call_taker"  # 接线员
FOLLOW_UP = "follow_up"  # 回访员
SUPERVISOR = "supervisor"  # 班长/管理员
ROLES = (CALL_TAKER, FOLLOW_UP, SUPERVISOR)
ROLE_LABELS_ZH = {CALL_TAKER: "接线员", FOLLOW_UP: "回访员", SUPERVISOR: "班长/管理员"}

F = TypeVar("F", bound=Callable[..., object])
ATTR = "__hotline_roles__"


def requires(*roles: str) -> Callable[[F], F]:
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"unknown roles: {sorted(unknown)}")

    def mark(handler: F) -> F:
        setattr(handler, ATTR, frozenset(roles))
        return handler

    return mark


def required_roles(handler: object) -> frozenset[str] | None:
    """The roles a handler needs, or None for a public handler."""
    return getattr(handler, ATTR, None)


# Follow-up agents call citizens about finished work: only then do they need the number.
PHONE_VISIBLE_STATES = frozenset({Status.RESOLVED, Status.CLOSED})


def can_see_phone(user: Any, case: Case) -> bool:
    """Whether this staff member (a User, or a dict with "role") may see the citizen's full phone number on
    this case. Only follow-up agents, and only on a case they call back about (resolved, or closed after the
    survey). Everyone else sees 138****1234."""
    role = user.get("role") if isinstance(user, dict) else getattr(user, "role", "")
    return role == FOLLOW_UP and case.status in PHONE_VISIBLE_STATES
