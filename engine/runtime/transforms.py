"""Turn a channel's mapping file into the Transform its pipeline calls for each message."""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

from engine.config import LoadedChannel, Project
from engine.config.schema import StudyAssemblyConfig
from engine.core.component import Inbound, Problem
from engine.correlation.assembly import assembly_writes
from engine.dicom import InstanceHeader
from engine.mapping import MappingError, MappingRefused, Record, load_mapping
from engine.runtime.channel import Invalid, Refused, Transform, Transformed
from engine.security.blind_index import BlindIndex

# Record fields searchable by blind index, and the index kind each one goes to.
INDEXED = {"accession": "accession", "patient_id": "mrn", "study_uid": "study_uid"}


def study_transform(config: StudyAssemblyConfig, index: BlindIndex, dialect: str, channel: str) -> Transform:
    """DICOM instances -> their header (kept sealed as the `transformed` part) and the rows that
    add them to their study."""

    def transform(inbound: Inbound) -> Transformed:
        header = inbound.decoded
        if not isinstance(header, InstanceHeader):
            raise Refused(Problem(f"channel {channel} assembles studies and takes DICOM instances only", code=200))
        body = json.dumps(header.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        indexes = {"study_uid": header.study_uid}
        if header.accession:
            indexes["accession"] = header.accession
        if header.patient_id:
            indexes["mrn"] = header.patient_id
        return Transformed(body, indexes, writes=assembly_writes(header, config, index, dialect, channel))

    return transform


def _indexes(source: object) -> dict[str, str]:
    """Searchable identifiers of the record an outbound message was built from."""
    fields = getattr(source, "fields", None) or {}
    found = {kind: str(fields[name]) for name, kind in INDEXED.items() if fields.get(name)}
    accessions = fields.get("accessions") or [o.get("accession") for o in fields.get("orders") or []]
    accessions = [a for a in accessions if a]
    if "accession" not in found and accessions:
        found["accession"] = str(accessions[0])
    return found


def build_transform(
    loaded: LoadedChannel, project: Project, index: BlindIndex | None = None, dialect: str = "sqlite"
) -> Transform | None:
    """The channel's transform, or None without a mapping. Compiles the mapping now, so a bad
    mapping fails at load (ConfigInvalid with positions), never on the first message."""
    if loaded.config.study is not None:
        if index is None:
            raise ValueError("study assembly needs the blind index")
        return study_transform(loaded.config.study, index, dialect, loaded.config.name)
    if loaded.config.mapping is None:
        return None
    compiled = load_mapping(project.root / loaded.config.mapping, project.root)
    site_tz = ZoneInfo(project.engine.site.timezone)

    def transform(inbound: Inbound) -> Transformed:
        source = inbound.decoded
        if inbound.kind == "record" and isinstance(source, dict):
            source = Record.from_json(inbound.raw)
        try:
            records = compiled.apply(source, site_tz=site_tz)
        except MappingRefused as exc:
            raise Refused(exc.problem()) from None
        except MappingError as exc:
            raise Invalid(exc.problem()) from None
        if compiled.target == "hl7v2":  # an outbound message: the ER7 itself is what destinations send
            return Transformed(body="".join(r.fields["er7"] for r in records).encode("utf-8"), indexes=_indexes(source))
        indexes: dict[str, str] = {}
        for record in records:  # the first value of each kind is searchable (one column per kind)
            for field, kind in INDEXED.items():
                value = record.fields.get(field)
                if value and kind not in indexes:
                    indexes[kind] = str(value)
        body = b"".join(record.to_json() + b"\n" for record in records)
        return Transformed(body=body, indexes=indexes)

    transform.slow = compiled.validate  # type: ignore[attr-defined]  # hl7apy checks each built message
    return transform
