"""Compose profiles: which optional services `up` starts.

Kept apart from spec.py so settings can read ATENDEAI_PROFILES without loading the YAML
parser. The filter runs once on the parsed spec, before any runtime sees it: both runtimes
start the same set, and `status`, `logs` and `down` keep the whole spec (they cover whatever
exists, whatever profile started it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from atendeai_ctl.errors import AtendeaiError

if TYPE_CHECKING:
    from atendeai_ctl.stack.spec import StackSpec

PROFILE_NAME = re.compile(r"\A[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")  # Compose's own rule
ALL_PROFILES = "all"


def parse_profiles(text: str) -> tuple[str, ...]:
    """`edge,monitoring` or `edge monitoring` (ATENDEAI_PROFILES, repeated --profile): names in
    order, once each. `all` selects every profile."""
    names: list[str] = []
    for name in re.split(r"[\s,]+", text.strip()):
        if not name:
            continue
        if not PROFILE_NAME.match(name):
            raise AtendeaiError(
                "invalid",
                f"{name!r} is not a profile name",
                "profile names use letters, digits, '_', '.' and '-'; separate them with commas",
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def select_profiles(spec: StackSpec, active: Iterable[str]) -> StackSpec:
    """The services `up` starts: those without `profiles`, and those with an active one, and
    the named volumes they mount.

    Done once, before any runtime sees the spec, so both runtimes start the same set. A
    service that is started but depends on one that is not is an error (Compose would start
    the dependency anyway; a profile should say what runs, so we say which one is missing).
    `status`, `logs` and `down` use the whole spec: they cover whatever exists.
    """
    wanted = set(active)
    every = ALL_PROFILES in wanted
    services = {
        name: svc
        for name, svc in spec.services.items()
        if not svc.profiles or every or wanted.intersection(svc.profiles)
    }
    for svc in services.values():
        for dep, _ in svc.depends_on:
            if dep not in services:
                needed = " or ".join(repr(p) for p in spec.services[dep].profiles)
                raise AtendeaiError(
                    "invalid",
                    f"service {svc.name} depends on {dep}, which is only in profile {needed}",
                    f"add --profile {spec.services[dep].profiles[0]} (or ATENDEAI_PROFILES)",
                )
    # Named volumes only of the services that start: an optional profile's data volume
    # (promdata, a replica's) is created when its profile is first used, not on every `up`.
    used = {m.source for svc in services.values() for m in svc.mounts if m.kind == "volume"}
    return replace(spec, services=services, volumes=tuple(v for v in spec.volumes if v in used))
