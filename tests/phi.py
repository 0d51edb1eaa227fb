"""Obviously fake but realistic PHI, and a scanner that proves none of it leaks."""

from __future__ import annotations

from pathlib import Path

NAME_FAMILY = "FAKEPATIENT"
NAME_GIVEN = "ZELDAQUINN"
MRN = "MRN-FAKE-4471902"
DOB = "19470312"
ACCESSION = "ACCFAKE88213"
PHONE = "555-0199-7731"
STRINGS = (NAME_FAMILY, NAME_GIVEN, MRN, DOB, ACCESSION, PHONE)

ORM = (
    "MSH|^~\\&|RIS|GENHOSP|RADBRIDGE|GENHOSP|20261121101500||ORM^O01|CTRL0001|P|2.3.1\r"
    f"PID|1||{MRN}^^^GENHOSP^MR||{NAME_FAMILY}^{NAME_GIVEN}^A||{DOB}|F|||1 FAKE ST^^SPRINGFIELD^ZZ^00000||{PHONE}\r"
    "PV1|1|O|RAD^^^GENHOSP\r"
    f"ORC|NW|PLC1001|{ACCESSION}||SC||^^^20261121101500^^S\r"
    f"OBR|1|PLC1001|{ACCESSION}|CTHEAD^CT HEAD WITHOUT CONTRAST^L|||20261121101500|||||||||||{ACCESSION}"
    "||||||CT|||^^^^^S\r"
)


def variants(text: str) -> list[bytes]:
    """The forms in which a string could sit on disk: UTF-8, UTF-16, lower/upper case."""
    out = []
    for s in {text, text.lower(), text.upper()}:
        out += [s.encode(), s.encode("utf-16-le"), s.encode("utf-16-be")]
    return out


def leaks_in_bytes(data: bytes, strings: tuple[str, ...] = STRINGS) -> list[str]:
    return [s for s in strings if any(v in data for v in variants(s))]


def leaks_in_tree(root: Path, strings: tuple[str, ...] = STRINGS) -> dict[str, list[str]]:
    """Every file under root (database, WAL, blobs, logs) scanned as raw bytes."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            hits = leaks_in_bytes(path.read_bytes(), strings)
            if hits:
                found[str(path)] = hits
    return found
