"""Culture ids: the one spelling of a culture that documents, score tables and set files share.

:func:`culture_id` turns a country string as a dataset writes it ('South Korea', 'KR',
'United_Kingdom') into a canonical lowercase id ('korea', 'uk'); :func:`display_name` turns an
id or a country string back into a name for prompts ('united_kingdom' -> 'United Kingdom').
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any


# Canonical id -> spellings used by BLEnD (names, file prefixes and hub split codes), NormAd and
# CulturalBench.  Anything else maps to its own lower_snake_case name ("Saudi Arabia" -> "saudi_arabia").
CULTURE_ALIASES: dict[str, tuple[str, ...]] = {
    "china": ("CN", "China", "PRC", "People's Republic of China", "Mainland China"),
    "indonesia": ("ID", "Indonesia"),
    "iran": ("IR", "Iran", "Islamic Republic of Iran", "Persia"),
    "mexico": ("MX", "Mexico", "México"),
    "korea": ("KR", "South Korea", "Korea", "Republic of Korea", "Korea, Republic of", "ROK"),
    "spain": ("ES", "Spain", "España"),
    "uk": ("GB", "UK", "U.K.", "United Kingdom", "Great Britain", "Britain"),
    "usa": ("US", "USA", "U.S.", "U.S.A.", "United States", "United States of America", "America"),
    "north_korea": ("KP", "North Korea", "DPRK", "Democratic People's Republic of Korea"),
    "greece": ("GR", "Greece"),
    "algeria": ("DZ", "Algeria"),
    "azerbaijan": ("AZ", "Azerbaijan"),
    "ethiopia": ("ET", "Ethiopia"),
    "assam": ("AS", "Assam"),
    "west_java": ("JB", "West Java"),
    "northern_nigeria": ("NG", "Northern Nigeria"),
}


def _spelling(name: Any) -> str:
    text = re.sub(r"[.'\u2019]", "", str(name)).lower()
    return " ".join(re.findall(r"[^\W_]+", text))


@lru_cache(maxsize=1)
def _alias_table() -> dict[str, str]:
    return {_spelling(a): cid for cid, aliases in CULTURE_ALIASES.items() for a in (cid, *aliases)}


def culture_id(name: Any) -> str:
    """Canonical lowercase culture id of a country string: 'South_Korea', 'KR' -> 'korea'; 'US' -> 'usa'."""
    key = _spelling(name or "")
    return _alias_table().get(key) or key.replace(" ", "_") or "unknown"


def display_name(country: str) -> str:
    """'united_kingdom' -> 'United Kingdom'; names with capitals are kept."""
    if country != country.lower():
        return country.replace("_", " ")
    return " ".join(w if w in {"of", "and", "the"} else w.capitalize() for w in re.split(r"[_\s]+", country.strip()))
