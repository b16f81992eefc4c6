"""A clinic slug derived from its display name ("Clínica Sorriso" -> "clinica-sorriso")."""

from __future__ import annotations

import re
import unicodedata

from atendeai_ctl.auth.identity import normalize
from atendeai_ctl.errors import AtendeaiError

MAX_SLUG = 63
_SEPARATORS = re.compile(r"[^a-z0-9]+")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def slugify(name: str) -> str:
    """Lowercase ASCII: accents folded, anything else becomes one '-', at most 63 characters.

    Raises AtendeaiError("invalid") when nothing usable is left (a name of only emoji or
    symbols), so the operator is told to pass --slug instead of getting an odd slug.
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = _SEPARATORS.sub("-", folded.lower()).strip("-")
    slug = slug[:MAX_SLUG].rstrip("-")
    if not slug:
        raise AtendeaiError(
            "invalid",
            f"cannot derive a slug from the name {name[:40]!r}",
            "pass --slug with lowercase letters, digits and '-'",
        )
    return slug


def normalize_slug(slug: str) -> str:
    """Slugs are case-insensitive: `--clinic Alpha` means `alpha`; anything else is refused.

    The same normalisation as logins and the limiter (auth.identity.normalize).
    """
    slug = normalize(slug)
    if not _SLUG.match(slug):
        raise AtendeaiError(
            "invalid",
            f"clinic slug {slug[:70]!r} is not valid",
            "use 1-63 lowercase letters, digits and '-', starting with a letter or digit",
        )
    return slug
