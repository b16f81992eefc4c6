"""Clinic commands as single transactions over auth.clinics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atendeai_ctl.admin.names import check_name
from atendeai_ctl.admin.slugs import normalize_slug, slugify
from atendeai_ctl.admin.target import Admin
from atendeai_ctl.auth import clinics
from atendeai_ctl.auth.clinics import Clinic
from atendeai_ctl.errors import AtendeaiError


@dataclass(frozen=True)
class Created:
    """A create command's result: the record, and whether this call made it."""

    clinic: Clinic
    created: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.clinic.to_dict(), "created": self.created}


def create(admin: Admin, *, name: str, slug: str | None, if_not_exists: bool) -> Created:
    """Create a clinic; with `if_not_exists` an existing slug returns that clinic instead."""
    name = check_name(name, what="clinic name")
    slug = normalize_slug(slug) if slug is not None else slugify(name)
    with admin.transaction() as conn:
        try:
            return Created(
                clinics.create_clinic(conn, slug=slug, name=name, actor=admin.actor), True
            )
        except AtendeaiError as exc:
            if exc.code != "conflict" or not if_not_exists:
                raise
        return Created(clinics.get_clinic(conn, slug), False)


def show(admin: Admin, slug: str) -> Clinic:
    with admin.transaction() as conn:
        return clinics.get_clinic(conn, normalize_slug(slug))


def list_all(admin: Admin) -> list[Clinic]:
    with admin.transaction(owner=True) as conn:
        return clinics.list_clinics(conn)


def rename(admin: Admin, slug: str, name: str) -> Clinic:
    name = check_name(name, what="clinic name")
    with admin.transaction() as conn:
        return clinics.rename_clinic(conn, slug=normalize_slug(slug), name=name, actor=admin.actor)


def set_status(admin: Admin, slug: str, *, enabled: bool) -> Clinic:
    """Disabling also revokes every session of the clinic (denylisted before the commit)."""
    with admin.transaction() as conn:
        return clinics.set_clinic_status(
            conn,
            admin.denylist if not enabled else None,
            slug=normalize_slug(slug),
            status="active" if enabled else "disabled",
            actor=admin.actor,
        )
