"""What the service treats as "the same account": one normalisation for slugs and emails.

Every place that compares or keys on an identity - the login lookup, the failed-login limiter's
account key, audit targets, and what create_clinic/create_user store (so uniqueness agrees) -
calls `normalize`. If two places normalised differently, an attacker could spell one account
several ways (`alpha`, `ALPHA`, ` Alpha `, fullwidth letters) and get a fresh failed-login
counter per spelling while the lookup still found the same account.

The form is trimmed, NFKC-normalised and casefolded (NFKC again after casefolding, since
casefolding can produce sequences that NFKC would compose differently). The result is
idempotent: normalize(normalize(x)) == normalize(x).
"""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile("[\x00\ud800-\udfff]")
"""Characters no identity, password or token may hold: NUL (PostgreSQL refuses it in text)
and lone surrogates (json.loads turns a "\\ud800" escape into one, and it cannot be encoded
as UTF-8)."""


def normalize(value: str) -> str:
    """The canonical form of a clinic slug or an email address."""
    if value.isascii():
        # The common case, and NFKC is the identity on ASCII.
        return value.strip().lower()
    folded = unicodedata.normalize("NFKC", value.strip()).casefold()
    return unicodedata.normalize("NFKC", folded).strip()


def lookup_key(value: str) -> str:
    """The form to look an identity up by: normalised, or "" (which names nothing stored,
    as creation refuses empty slugs and emails) when it holds what PostgreSQL refuses."""
    return "" if unsafe(value) else normalize(value)


def unsafe(value: str) -> bool:
    """True if `value` holds a character that must not reach PostgreSQL, Redis or bcrypt."""
    return _UNSAFE.search(value) is not None
