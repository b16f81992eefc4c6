"""Password policy and bcrypt: cost floor and default, the 72-byte rule, length, rehash need."""

from __future__ import annotations

import pytest

from atendeai_ctl.auth import passwords
from atendeai_ctl.auth.settings import AuthSettings
from atendeai_ctl.errors import AtendeaiError
from tests.auth_helpers import FAST


def test_default_cost_is_12() -> None:
    assert AuthSettings().bcrypt_cost == 12
    assert AuthSettings.from_env({}).bcrypt_cost == 12
    assert passwords.hash_password("twelve chars!", AuthSettings()).startswith("$2b$12$")


def test_cost_can_be_raised_but_never_below_10() -> None:
    assert AuthSettings.from_env({"ATENDEAI_AUTH_BCRYPT_COST": "13"}).bcrypt_cost == 13
    with pytest.raises(AtendeaiError) as err:
        AuthSettings.from_env({"ATENDEAI_AUTH_BCRYPT_COST": "9"})
    assert err.value.code == "invalid"
    with pytest.raises(AtendeaiError) as err:
        AuthSettings(bcrypt_cost=4)
    assert err.value.code == "invalid"
    assert passwords.hash_password("twelve chars!", FAST).startswith("$2b$10$")


def test_password_over_72_bytes_is_refused_with_a_clear_message() -> None:
    with pytest.raises(AtendeaiError) as err:
        passwords.hash_password("a" * 73, FAST)
    assert err.value.code == "invalid"
    assert "72 bytes" in err.value.message
    assert err.value.hint is not None and "not cut" in err.value.hint
    # 37 characters but 74 bytes in UTF-8: the limit is on bytes
    with pytest.raises(AtendeaiError) as err:
        passwords.hash_password("é" * 37, FAST)
    assert err.value.code == "invalid" and "72 bytes" in err.value.message
    assert passwords.hash_password("a" * 72, FAST)


def test_long_password_is_never_truncated_to_match() -> None:
    prefix = "p" * 72
    stored = passwords.hash_password(prefix, FAST)
    assert passwords.check_password(prefix, stored)
    assert not passwords.check_password(prefix + "extra", stored)


def test_minimum_length_is_12() -> None:
    with pytest.raises(AtendeaiError) as err:
        passwords.hash_password("elevenchars", FAST)
    assert err.value.code == "invalid"
    assert "at least 12" in err.value.message
    assert passwords.hash_password("twelve chars", FAST)


def test_needs_rehash_when_the_configured_cost_rose() -> None:
    stored = passwords.hash_password("twelve chars", FAST)
    assert not passwords.needs_rehash(stored, FAST)
    assert passwords.needs_rehash(stored, FAST.with_(bcrypt_cost=11))
    assert passwords.hash_cost(stored) == 10


def test_dummy_hash_uses_the_configured_cost() -> None:
    assert passwords.hash_cost(passwords.dummy_hash(10)) == 10
    assert not passwords.check_password("anything at all", passwords.dummy_hash(10))
