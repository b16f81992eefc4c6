"""Slugs, durations and names: the pure helpers behind the admin commands."""

from __future__ import annotations

import pytest

from atendeai_ctl.admin.durations import parse_duration, parse_ttl
from atendeai_ctl.admin.names import check_name
from atendeai_ctl.admin.slugs import normalize_slug, slugify
from atendeai_ctl.errors import AtendeaiError


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Clínica Sorriso", "clinica-sorriso"),
        ("  São João -- Odontologia!! ", "sao-joao-odontologia"),
        ("Dr. O'Brien's \"Best\" Clinic", "dr-o-brien-s-best-clinic"),
        ("Clínica 😀 Feliz", "clinica-feliz"),
        ("ÅÉÎÕÜ Ç ñ", "aeiou-c-n"),
        ("x" * 10_000, "x" * 63),
        ("a" * 62 + " b", "a" * 62),
    ],
)
def test_slugify_folds_accents_and_keeps_a_valid_slug(name: str, slug: str) -> None:
    assert slugify(name) == slug
    assert normalize_slug(slug) == slug


@pytest.mark.parametrize("name", ["😀😀", "!!!", "   ", "中文"])
def test_slugify_refuses_names_with_nothing_usable(name: str) -> None:
    with pytest.raises(AtendeaiError) as caught:
        slugify(name)
    assert caught.value.code == "invalid" and "--slug" in (caught.value.hint or "")


@pytest.mark.parametrize("bad", ["-alpha", "al pha", "ålpha", "a" * 64, "", "al_pha"])
def test_normalize_slug_refuses_what_the_schema_would(bad: str) -> None:
    with pytest.raises(AtendeaiError) as caught:
        normalize_slug(bad)
    assert caught.value.code == "invalid"


def test_normalize_slug_is_case_insensitive() -> None:
    assert normalize_slug(" Alpha-1 ") == "alpha-1"


@pytest.mark.parametrize(
    ("text", "seconds"), [("1s", 1), ("30s", 30), ("15m", 900), ("2h", 7200), ("24h", 86400),
                          ("90", 90), (" 5M ", 300)],
)  # fmt: skip
def test_ttl_accepts_seconds_minutes_hours(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["0s", "0", "25h", "86401", "2d", "-1s", "1.5h", "15 minutes",
                                  "", "1e3", "99999999999h"])  # fmt: skip
def test_ttl_out_of_range_or_malformed_is_invalid(text: str) -> None:
    with pytest.raises(AtendeaiError) as caught:
        parse_ttl(text)
    assert caught.value.code == "invalid"
    assert "1s to 24h" in (caught.value.hint or "")


def test_since_allows_days() -> None:
    assert parse_duration("7d", what="--since", minimum=1, maximum=10 * 86400) == 7 * 86400


@pytest.mark.parametrize("name", ['Clínica D\'Ávila "Sorriso"', "Clínica 😀", "a" * 200])
def test_names_with_quotes_and_emoji_are_kept_exactly(name: str) -> None:
    assert check_name(f"  {name} ", what="clinic name") == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("x" * 10_000, "10000 characters"), ("", "empty"), ("  ", "empty"),
     ("a\x00b", "control"), ("line\nbreak", "control"), ("esc\x1b[31m", "control")],
)  # fmt: skip
def test_bad_names_are_invalid(name: str, fragment: str) -> None:
    with pytest.raises(AtendeaiError) as caught:
        check_name(name, what="clinic name")
    assert caught.value.code == "invalid" and fragment in caught.value.message
