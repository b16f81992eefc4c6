"""Replicas: how many copies of a service `up` runs (`--scale auth=3`, ATENDEAI_AUTH_REPLICAS).

Like profiles.py, applied once to the parsed spec before any runtime sees it: the count is a
field of the service (spec.Service.replicas), and each runtime turns replica k into its own
objects by the same rule (name `<service>-k`, published ports + k - 1). Kept apart from
spec.py so settings can read the count without loading the YAML parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from atendeai_ctl.errors import AtendeaiError

if TYPE_CHECKING:
    from atendeai_ctl.stack.spec import Service, StackSpec

MAX_REPLICAS = 10
"""The gateway reserves this many slots (configs/haproxy/haproxy.cfg: server-template 1-10)."""
SETTINGS = {"auth": "ATENDEAI_AUTH_REPLICAS"}
"""The services whose count also has a setting (configs/atendeai.env); --scale names any."""
_SCALE = re.compile(r"\A([a-zA-Z0-9][a-zA-Z0-9_.-]*)=([0-9]+)\Z")


def replica_count(text: str, where: str) -> int:
    """A count from a flag or a setting: a whole number from 1 to MAX_REPLICAS."""
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_REPLICAS:
        raise AtendeaiError(
            "invalid",
            f"{where}: {text!r} is not a replica count",
            f"use a whole number from 1 to {MAX_REPLICAS}",
        )
    return int(value)


def parse_scale(items: Iterable[str]) -> dict[str, int]:
    """`auth=3` (repeatable --scale): service -> count; a later one for a service wins."""
    counts: dict[str, int] = {}
    for item in items:
        match = _SCALE.match(item.strip())
        if not match:
            raise AtendeaiError(
                "invalid",
                f"--scale {item!r} is not SERVICE=N",
                "for example: --scale auth=3",
            )
        counts[match.group(1)] = replica_count(match.group(2), f"--scale {match.group(1)}")
    return counts


def settings_scale(get: Callable[[str], str | None]) -> dict[str, int]:
    """The counts the settings ask for (ATENDEAI_AUTH_REPLICAS; `Config.get`), where set."""
    counts = {}
    for service, key in SETTINGS.items():
        value = get(key)
        if value is not None and value.strip():
            counts[service] = replica_count(value, key)
    return counts


def scalable(service: Service) -> str | None:
    """Why a service cannot run as several copies, or None when it can: copies share nothing
    but the network, so not data (a named volume) and not one fixed address."""
    if service.ipv4_address is not None:
        return f"it holds the fixed address {service.ipv4_address}"
    if any(m.kind == "volume" for m in service.mounts):
        return "it keeps data in a named volume"
    return None


def apply_scale(spec: StackSpec, counts: Mapping[str, int]) -> StackSpec:
    """The spec with each named service's `replicas` set (done once, before any runtime)."""
    from atendeai_ctl.stack.orchestrator import one_shot_services

    jobs = one_shot_services(spec)
    services = dict(spec.services)
    for name, count in counts.items():
        service = services.get(name)
        if service is None:
            raise AtendeaiError(
                "invalid",
                f"--scale {name}: no such service",
                f"services: {', '.join(spec.services)}",
            )
        reason = "it is a one-shot job" if name in jobs else scalable(service)
        if reason is not None and count != 1:
            raise AtendeaiError("invalid", f"service {name} cannot be scaled: {reason}")
        services[name] = replace(service, replicas=count)
    return replace(spec, services=services)
