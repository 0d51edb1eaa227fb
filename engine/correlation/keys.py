"""The correlation keys orders and studies are matched by, as (kind, blind index) pairs.

Both sides compute keys the same way here, so an accession from HL7 and one from a DICOM header
meet in the same index. `accession@issuer` qualifies the accession with its issuer, for sites
where accession numbers are only unique per issuer.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.security.blind_index import BlindIndex

_INDEX_KIND = {"accession": "accession", "accession@issuer": "accession", "study_uid": "study_uid",
               "placer": "placer", "filler": "filler"}  # fmt: skip


def keys(
    index: BlindIndex,
    *,
    accessions: Iterable[str] = (),
    accession_issuer: str = "",
    study_uid: str = "",
    placer: str = "",
    filler: str = "",
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for accession in accessions:
        if accession:
            out.append(("accession", index("accession", accession)))
            if accession_issuer:
                out.append(("accession@issuer", index("accession", f"{accession_issuer.strip()}|{accession}")))
    for kind, value in (("study_uid", study_uid), ("placer", placer), ("filler", filler)):
        if value and value.strip():
            out.append((kind, index(_INDEX_KIND[kind], value)))
    return list(dict.fromkeys(out))


def patient_key(index: BlindIndex, patient_id: str, issuer: str = "") -> str:
    """The patient's blind index; the issuer is kept out so a feed that omits it still matches
    (the issuer is compared separately when the site asks for it)."""
    return index("mrn", patient_id or "")
