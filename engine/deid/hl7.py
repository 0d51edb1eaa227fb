"""HL7 v2 de-identification (ER7 in, ER7 out) for messages that leave: the HIPAA Safe Harbor identifiers.

Per segment, a table of fields and what happens to them (every repetition):

- patient identifiers (PID-2/3/4, MRG) become the keyed patient pseudonym, the same 'ANON-…' that replaces
  the DICOM Patient ID, so a study and its order stay linked; the identifier type (CX.5) is kept;
- the patient name (PID-5) becomes that pseudonym; other names, addresses, phones, SSN, licences: cleared;
- order, visit, account and specimen numbers (ORC/OBR placer and filler, OBR-18..21, PV1-19, IPC) become
  keyed 'ID-…' pseudonyms (one accession gives one pseudonym everywhere); study UIDs (IPC-3, ZDS-1) get
  the DICOM UID pseudonym;
- dates are reduced to the year, or shifted by the patient's DICOM day shift under Retain Longitudinal
  Temporal; the birth date always becomes the year only, and is removed for ages of 90 and over;
- free text (NTE-3, OBX-5 of types TX/FT/ST, OBR-13, PV2-12, DG1-4, AL1-5) is blanked unless
  `hl7.keep_free_text`; OBX-5 of any other non-coded, non-numeric type is cleared;
- provider names (ordering, attending, interpreter, ...) are not patient identifiers under Safe Harbor but
  are cleared unless `hl7.keep_provider_names` (no model needs them).

Kept: MSH routing fields, locations (PV1-3) and facility names — not Safe Harbor identifiers of the patient
(they are about the sender), and needed to route the message. Identifier and date fields are found by
position, per segment, as tabulated below; a sender that puts them elsewhere must be mapped first.

Segments without a table here are dropped: NK1, GT1, IN1-3, PD1, ROL, ACC and the like hold identifiers of
relatives, guarantors, employers and insurance (Safe Harbor identifiers), and unknown Z-segments cannot be
judged. MSH, MSA, ERR, SFT and QAK pass unchanged except for MSH-7 (a date).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from engine.deid.profile import DeidProfile
from engine.deid.pseudonyms import (
    day_shift,
    id_pseudonym,
    patient_pseudonym,
    shift_dt,
    uid_pseudonym,
    year_only,
)
from engine.hl7v2 import Delimiters, Message
from engine.hl7v2.escape import unescape

__all__ = ["RULES", "deidentify_hl7"]

PATIENT, NAME, PSEUDO, UID = "patient", "name", "pseudo", "uid"
CLEAR, DOB, DATE, PROVIDER, TEXT, OBX_VALUE = "clear", "dob", "date", "provider", "text", "obx-value"
Rule = tuple[str, tuple[int, ...]]

_D: Rule = (DATE, (1,))
_TQ: Rule = (DATE, (4, 5))  # TQ start and end date/time
_ID: Rule = (PSEUDO, (1,))
_EIP: Rule = (PSEUDO, (1, 2))  # placer^filler pair
_C: Rule = (CLEAR, ())
_P: Rule = (PROVIDER, ())
_T: Rule = (TEXT, ())

RULES: dict[str, dict[int, Rule]] = {
    "MSH": {7: _D},
    "EVN": {2: _D, 3: _D, 5: _P, 6: _D},
    "PID": {
        2: (PATIENT, ()), 3: (PATIENT, ()), 4: (PATIENT, ()), 5: (NAME, ()), 6: _C, 7: (DOB, (1,)), 9: _C,
        11: _C, 12: _C, 13: _C, 14: _C, 18: _ID, 19: _C, 20: _C, 21: _C, 23: _C, 29: _D, 33: _D, 40: _C,
    },
    "MRG": {1: (PATIENT, ()), 2: (PATIENT, ()), 3: _ID, 4: (PATIENT, ()), 5: _ID, 6: _ID, 7: _C},
    "PV1": {5: _ID, 7: _P, 8: _P, 9: _P, 17: _P, 19: _ID, 44: _D, 45: _D, 50: _ID, 52: _P},
    "PV2": {8: _D, 9: _D, 12: _T, 13: _P, 26: _D},
    "ORC": {
        2: _ID, 3: _ID, 4: _ID, 7: _TQ, 8: _EIP, 9: _D, 10: _P, 11: _P, 12: _P, 14: _C, 15: _D, 19: _P,
        22: _C, 23: _C, 24: _C, 27: _D,
    },
    "OBR": {
        2: _ID, 3: _ID, 6: _D, 7: _D, 8: _D, 10: _P, 13: _T, 14: _D, 16: _P, 17: _C, 18: _ID, 19: _ID,
        20: _ID, 21: _ID, 22: _D, 27: _TQ, 28: _P, 29: _EIP, 32: _P, 33: _P, 34: _P, 35: _P, 36: _D,
    },
    "OBX": {5: (OBX_VALUE, ()), 12: _D, 14: _D, 16: _P, 19: _D, 24: _C, 25: _P},
    "NTE": {3: _T, 5: _P, 6: _D},
    "TQ1": {7: _D, 8: _D},
    "SPM": {2: _EIP, 3: _EIP, 17: (DATE, (1, 2)), 18: _D, 19: _D},
    "IPC": {1: _ID, 2: _ID, 3: (UID, ()), 4: _ID},
    "ZDS": {1: (UID, ())},  # radiology ORM/OMI Study Instance UID (IHE SWF)
    "AL1": {5: _T, 6: _D},
    "DG1": {4: _T, 5: _D, 16: _P, 19: _D},
    "MSA": {},
    "ERR": {},
    "SFT": {},
    "QAK": {},
}  # fmt: skip

_HEADERS = frozenset(("MSH", "BHS", "FHS"))
_TEXT_TYPES = frozenset({"TX", "FT", "ST"})
_DATE_TYPES = frozenset({"DT", "DTM", "TS"})
_KEEP_TYPES = frozenset({"NM", "SN", "CE", "CWE", "CNE", "CF", "CD", "ID", "IS", "NA", "MA", "TM"})


@dataclass(frozen=True)
class _Ctx:
    d: Delimiters
    codec: str
    profile: DeidProfile
    key: bytes
    patient: str  # the patient pseudonym
    shift: int
    year: int  # reference year for the over-89 rule

    def value(self, raw: str) -> str:
        """Unescaped first sub-component of a component."""
        return unescape(raw.split(self.d.subcomponent)[0], self.d, self.codec).strip()

    def date(self, raw: str) -> str:
        if not raw:
            return raw
        if self.profile.retain_longitudinal_temporal:
            return shift_dt(raw, self.shift) or ""
        return year_only(raw)

    def dob(self, raw: str) -> str:
        year = year_only(raw)
        return year if year and self.year - int(year) < 90 else ""


def _repetition(rep: str, kind: str, comps: tuple[int, ...], ctx: _Ctx) -> str:
    if not rep:
        return rep
    d, p = ctx.d, ctx.profile
    parts = rep.split(d.component)
    if kind == NAME:
        return ctx.patient
    if kind == PATIENT:
        value = ctx.value(parts[0])
        pseudo = patient_pseudonym(ctx.key, p.project, value) if value else ""
        return d.component.join([pseudo, "", "", "", parts[4]]) if len(parts) >= 5 and parts[4] else pseudo
    if kind == PSEUDO:
        out = []
        for n in range(1, max(comps) + 1):
            value = ctx.value(parts[n - 1]) if n in comps and n <= len(parts) else ""
            out.append(id_pseudonym(ctx.key, p.project, value) if value else "")
        return d.component.join(out).rstrip(d.component)
    if kind == UID:
        value = ctx.value(parts[0])
        return value if p.retain_uids or not value else uid_pseudonym(ctx.key, p.project, value)
    # DATE / DOB: the first sub-component of each listed component
    fn = ctx.dob if kind == DOB else ctx.date
    for n in comps:
        if n <= len(parts) and parts[n - 1]:
            subs = parts[n - 1].split(d.subcomponent)
            subs[0] = fn(subs[0])
            parts[n - 1] = d.subcomponent.join(subs)
    return d.component.join(parts)


def _field(raw: str, rule: Rule, ctx: _Ctx, obx_type: str) -> str:
    kind, comps = rule
    h = ctx.profile.hl7
    if kind == OBX_VALUE:
        if obx_type in _TEXT_TYPES:
            kind = TEXT
        elif obx_type in _DATE_TYPES:
            kind, comps = DATE, (1,)
        elif obx_type not in _KEEP_TYPES:
            return ""  # names, addresses, ids, encapsulated documents, unknown types
        else:
            return raw
    if kind == CLEAR:
        return ""
    if kind == PROVIDER:
        return raw if h.keep_provider_names else ""
    if kind == TEXT:
        return raw if h.keep_free_text else ""
    rep = ctx.d.repetition
    return rep.join(_repetition(r, kind, comps, ctx) for r in raw.split(rep))


def _context(msg: Message, profile: DeidProfile, key: bytes) -> _Ctx:
    pid = msg.get("PID-3.1") or msg.get("PID-2.1") or msg.get("PID-4.1")
    patient_key = pid.strip() if pid else "message:" + (msg.msh.value(10) or "")
    ref = year_only(msg.msh.value(7, 1, 1) or "")
    return _Ctx(
        d=msg.encoding,
        codec=msg.codec,
        profile=profile,
        key=key,
        patient=patient_pseudonym(key, profile.project, patient_key),
        shift=day_shift(key, profile.project, patient_key),
        year=int(ref) if ref else date.today().year,
    )


def deidentify_hl7(er7: str, profile: DeidProfile, key: bytes) -> str:
    """De-identify one ER7 message; segments are returned CR-terminated. Raises Hl7ParseError (a
    PermanentError) when the text is not readable ER7."""
    msg = Message.parse(er7)
    ctx = _context(msg, profile, key)
    fs = msg.encoding.field
    out = []
    for seg in msg:
        rules = RULES.get(seg.name)
        if rules is None:
            continue  # dropped: see the module docstring
        fields = list(seg.fields)
        obx_type = fields[2].split(msg.encoding.component)[0].strip().upper() if len(fields) > 2 else ""
        for number, rule in rules.items():
            if number < len(fields) and fields[number]:
                fields[number] = _field(fields[number], rule, ctx, obx_type)
        if seg.name in _HEADERS:
            out.append(seg.name + fs + fs.join(fields[2:]))
        else:
            out.append(fs.join(fields))
    return "\r".join(out) + "\r"
