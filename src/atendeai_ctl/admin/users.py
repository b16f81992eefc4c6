"""User commands as single transactions over auth.users."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from atendeai_ctl.admin.names import check_name
from atendeai_ctl.admin.slugs import normalize_slug
from atendeai_ctl.admin.target import Admin, act_as_app
from atendeai_ctl.auth import clinics, users
from atendeai_ctl.auth.users import User
from atendeai_ctl.errors import AtendeaiError

GENERATED_PASSWORD_BYTES = 18
"""24 URL-safe characters: above the 12-character minimum, far below bcrypt's 72 bytes."""


def generate_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


@dataclass(frozen=True)
class Member:
    """A user with the slug of their clinic (user rows carry only the clinic's id)."""

    clinic: str
    user: User

    def to_dict(self) -> dict[str, Any]:
        return {**self.user.to_dict(), "clinic": self.clinic}


@dataclass(frozen=True)
class Created:
    member: Member
    created: bool
    password: str | None
    """The generated password, shown once; None when the operator chose it or none was set."""

    def to_dict(self) -> dict[str, Any]:
        return {**self.member.to_dict(), "created": self.created, "password": self.password}


def create(
    admin: Admin,
    *,
    clinic: str,
    email: str,
    password: str,
    role: str,
    name: str | None,
    if_not_exists: bool,
    generated: bool = False,
) -> Created:
    """Create a user; with `if_not_exists` an existing email (any case) returns that user."""
    slug = normalize_slug(clinic)
    if name is not None:
        name = check_name(name, what="user name")
    with admin.transaction() as conn:
        try:
            user = users.create_user(
                conn, admin.settings, clinic=slug, email=email, password=password,
                actor=admin.actor, role=role, name=name,
            )  # fmt: skip
            return Created(Member(slug, user), True, password if generated else None)
        except AtendeaiError as exc:
            if exc.code != "conflict" or not if_not_exists:
                raise
        existing = users.get_user(conn, clinic=slug, email=email.strip())
        return Created(Member(slug, existing), False, None)


def show(admin: Admin, *, clinic: str, email: str) -> Member:
    slug = normalize_slug(clinic)
    with admin.transaction() as conn:
        return Member(slug, users.get_user(conn, clinic=slug, email=email.strip()))


def list_members(admin: Admin, *, clinic: str | None) -> list[Member]:
    """One clinic's users, or every clinic's (by slug, then email) when `clinic` is None."""
    with admin.transaction(owner=True) as conn:
        slugs = (
            [normalize_slug(clinic)]
            if clinic is not None
            else [c.slug for c in clinics.list_clinics(conn)]
        )
        act_as_app(conn)
        return [Member(s, u) for s in slugs for u in users.list_users(conn, clinic=s)]


def set_role(admin: Admin, *, clinic: str, email: str, role: str) -> Member:
    """A changed role ends the user's sessions (denylisted before the commit)."""
    slug = normalize_slug(clinic)
    with admin.transaction() as conn:
        user = users.set_role(
            conn, clinic=slug, email=email.strip(), role=role, actor=admin.actor,
            denylist=admin.denylist,
        )  # fmt: skip
    return Member(slug, user)


def set_status(admin: Admin, *, clinic: str, email: str, enabled: bool) -> Member:
    """Disabling revokes the user's sessions (denylisted before the commit)."""
    slug = normalize_slug(clinic)
    with admin.transaction() as conn:
        user = users.set_user_status(
            conn,
            admin.denylist if not enabled else None,
            clinic=slug,
            email=email.strip(),
            status="active" if enabled else "disabled",
            actor=admin.actor,
        )
    return Member(slug, user)


def set_password(admin: Admin, *, clinic: str, email: str, password: str) -> Member:
    """A new password ends every session of the user: a reset usually means compromise."""
    slug = normalize_slug(clinic)
    with admin.transaction() as conn:
        user = users.set_password(
            conn, admin.settings, admin.denylist, clinic=slug, email=email.strip(),
            password=password, actor=admin.actor,
        )  # fmt: skip
    return Member(slug, user)
