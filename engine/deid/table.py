"""PS3.15 Annex E Table E.1-1 (Basic Profile column), loaded from the installed dicom-anonymizer package.

The table is never typed here: each edition is a module `dicomanonymizer.dicom_anonymization_databases.
dicomfields_<edition>` holding one list of tags per action code. Entries are (group, element) pairs or
masks (group, element, group mask, element mask) such as (0x5000, 0x0000, 0xFF00, 0x0000) for every
element of the repeating curve groups 50xx, or (0x6000, 0x3000, 0xFF00, 0xFFFF) for Overlay Data 60xx,3000.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache

from engine.core.errors import ConfigError

__all__ = ["DEFAULT_EDITION", "TABLE_LISTS", "AnnexETable", "TableRow", "editions", "load_table"]

_PACKAGE = "dicomanonymizer.dicom_anonymization_databases"
_PREFIX = "dicomfields_"
DEFAULT_EDITION = "2026c"

# The package's list name -> the standard's action code in the Basic Profile column.
TABLE_LISTS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


@dataclass(frozen=True, slots=True)
class TableRow:
    """One row: `tag` is group<<16|element; `mask` is 0xFFFFFFFF for an exact tag."""

    tag: int
    mask: int
    code: str

    @property
    def is_mask(self) -> bool:
        return self.mask != 0xFFFFFFFF

    def matches(self, tag: int) -> bool:
        return tag & self.mask == self.tag & self.mask


@dataclass(frozen=True)
class AnnexETable:
    edition: str
    rows: tuple[TableRow, ...]
    exact: dict[int, str]
    masks: tuple[TableRow, ...]

    def lookup(self, tag: int) -> str | None:
        """The Basic Profile action code for `tag`, or None when the table does not list it."""
        code = self.exact.get(tag)
        if code is not None:
            return code
        for row in self.masks:
            if row.matches(tag):
                return row.code
        return None


def editions() -> list[str]:
    """Editions the installed package ships, oldest first (their names sort chronologically)."""
    module = importlib.import_module(_PACKAGE)
    found = [m.name[len(_PREFIX) :] for m in pkgutil.iter_modules(module.__path__) if m.name.startswith(_PREFIX)]
    return sorted(found)


@lru_cache(maxsize=8)
def load_table(edition: str = DEFAULT_EDITION) -> AnnexETable:
    if edition not in editions():
        raise ConfigError(f"unknown Annex E table edition {edition!r}; installed: {', '.join(editions())}")
    module = importlib.import_module(f"{_PACKAGE}.{_PREFIX}{edition}")
    rows: list[TableRow] = []
    for list_name, code in TABLE_LISTS.items():
        for entry in getattr(module, list_name, ()):
            if len(entry) == 2:
                rows.append(TableRow((entry[0] << 16) | entry[1], 0xFFFFFFFF, code))
            elif len(entry) == 4:
                rows.append(TableRow((entry[0] << 16) | entry[1], (entry[2] << 16) | entry[3], code))
            else:
                raise ConfigError(f"Annex E table {edition}: unreadable entry in {list_name}")
    exact = {r.tag: r.code for r in rows if not r.is_mask}
    return AnnexETable(edition, tuple(rows), exact, tuple(r for r in rows if r.is_mask))
