"""Administration composed from the auth library, for `atendeai clinic|user|token|audit`.

    target.py     where to act (database, Redis, keys dir) and who acts (`cli:<os user>`);
                  one transaction per command; driver errors -> one-line AtendeaiError
    slugs.py      a clinic slug derived from its display name
    durations.py  "30s", "15m", "2h", "7d" -> seconds, with range checks
    names.py      display names checked before they reach the database
    clinics.py    clinic commands (create-or-get, rename, enable/disable)
    users.py      user commands (create-or-get, list across clinics, generated passwords)
    tokens.py     issue / verify / revoke tokens, rotate signing keys
    audit.py      reading the audit trail across clinics

Hashing, token signing, session revocation and audit rows are the auth library's; these
modules only compose its calls so that each command is one transaction.
"""
