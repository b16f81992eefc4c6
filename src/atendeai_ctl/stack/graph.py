"""Dependency order: which services can start together, which must wait (depends_on)."""

from __future__ import annotations

from atendeai_ctl.stack.spec import StackSpec


def levels(spec: StackSpec) -> list[list[str]]:
    """Services grouped so each group depends only on earlier groups (cycles are rejected
    when the spec is loaded)."""
    remaining = {name: {dep for dep, _ in svc.depends_on} for name, svc in spec.services.items()}
    done: set[str] = set()
    out: list[list[str]] = []
    while remaining:
        ready = sorted(name for name, deps in remaining.items() if deps <= done)
        out.append(ready)
        done.update(ready)
        for name in ready:
            del remaining[name]
    return out


def dependents(spec: StackSpec, service: str) -> dict[str, str]:
    """Who waits on `service`, and for which condition."""
    return {
        name: cond
        for name, svc in spec.services.items()
        for dep, cond in svc.depends_on
        if dep == service
    }
