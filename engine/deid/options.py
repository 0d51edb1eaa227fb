"""From a Table E.1-1 action code and the profile's options to the one action applied to an attribute.

Compound codes (the standard: "use the stricter action applicable to the IOD") need the attribute's type in
the IOD, which a de-identifier of arbitrary instances does not know. The rule here: the least destructive
member that still keeps any IOD valid where the attribute is present —

    X/Z -> Z      (present but empty satisfies Type 2 and Type 3)
    X/D -> D      (a dummy value satisfies Type 1)
    Z/D -> D      (likewise)
    X/Z/D -> Z    (kept present, emptied)
    X/Z/U* -> U   (sequences kept, the UIDs inside replaced; a UI value replaced)

The table package carries only the Basic Profile column, so the option columns are written out below as
small tag sets, each citing its column of Table E.1-1. This is the only place tags are typed.
"""

from __future__ import annotations

from engine.deid.profile import DeidProfile

__all__ = [
    "BIRTH",
    "COMPOUND",
    "DESCRIPTORS",
    "DEVICE_IDENTITY",
    "INSTITUTION_IDENTITY",
    "PATIENT_AGE",
    "PATIENT_CHARACTERISTICS",
    "PSEUDONYM_TAGS",
    "TEXT_VRS",
    "basic_action",
    "resolve",
]

COMPOUND = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "Z", "X/Z/U*": "U"}
TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
PATIENT_AGE = 0x00101010
# Patient ID (Z/D) and Patient's Name (Z) get a keyed patient pseudonym (a D-style dummy) so the studies
# of one patient stay linked within a project.
PSEUDONYM_TAGS = frozenset({PATIENT_ID, PATIENT_NAME})

# Column "Rtn. Pat. Chars. Opt." (Retain Patient Characteristics Option), its K entries.
PATIENT_CHARACTERISTICS = frozenset({
    0x00100040,  # Patient's Sex
    PATIENT_AGE,  # Patient's Age (over 89 generalised to 090Y, HIPAA Safe Harbor)
    0x00101020,  # Patient's Size
    0x00101030,  # Patient's Weight
    0x00102160,  # Ethnic Group
    0x00102161,  # Ethnic Group Code Sequence
    0x00102162,  # Ethnic Groups
    0x001021A0,  # Smoking Status
    0x001021C0,  # Pregnancy Status
    0x00102203,  # Patient's Sex Neutered
})  # fmt: skip

# Column "Rtn. Dev. Id. Opt." (Retain Device Identity Option), its K entries.
DEVICE_IDENTITY = frozenset({
    0x00081010,  # Station Name
    0x00181000,  # Device Serial Number
    0x00181002,  # Device UID
    0x00181004,  # Plate ID
    0x00181005,  # Generator ID
    0x00181007,  # Cassette ID
    0x00181008,  # Gantry ID
    0x0018700A,  # Detector ID
    0x00189371,  # X-Ray Detector ID
    0x00189373,  # X-Ray Detector Label
    0x00400001,  # Scheduled Station AE Title
    0x00400010,  # Scheduled Station Name
    0x00400241,  # Performed Station AE Title
    0x00400242,  # Performed Station Name
    0x30080105,  # Source Serial Number
    0x300A00B2,  # Treatment Machine Name
    0x3010001B,  # Device Alternate Identifier
    0x3010002D,  # Device Label
    0x30100043,  # Manufacturer's Device Identifier
})  # fmt: skip

# Column "Rtn. Inst. Id. Opt." (Retain Institution Identity Option), its K entries.
INSTITUTION_IDENTITY = frozenset({
    0x00080080,  # Institution Name
    0x00080081,  # Institution Address
    0x00080082,  # Institution Code Sequence
    0x00081040,  # Institutional Department Name
    0x00081041,  # Institutional Department Type Code Sequence
})  # fmt: skip

# Column "Clean Desc. Opt." (Clean Descriptors Option), its C entries holding text.
DESCRIPTORS = frozenset({
    0x00081030,  # Study Description
    0x0008103E,  # Series Description
    0x00081080,  # Admitting Diagnoses Description
    0x00082111,  # Derivation Description
    0x00180010,  # Contrast/Bolus Agent
    0x00181030,  # Protocol Name
    0x00181400,  # Acquisition Device Processing Description
    0x00184000,  # Acquisition Comments
    0x00204000,  # Image Comments
    0x00321060,  # Requested Procedure Description
    0x00324000,  # Study Comments
    0x00400007,  # Scheduled Procedure Step Description
    0x00400254,  # Performed Procedure Step Description
    0x00401400,  # Requested Procedure Comments
})  # fmt: skip

# Birth date and time stay removed under Retain Longitudinal Temporal (no column retains them).
BIRTH = frozenset({0x00100030, 0x00100032})


def basic_action(code: str) -> str:
    """The single action of a Basic Profile code: compounds resolved by the rule in the module docstring."""
    return COMPOUND.get(code, code)


def resolve(tag: int, vr: str, code: str, profile: DeidProfile) -> str:
    """The action for one listed attribute: D, Z, X, K, C or U.

    Options change the Basic Profile action as their columns do: K (retain), or C (clean) for descriptors
    and for dates under Retain Longitudinal Temporal Information with Modified Dates (times are kept).
    """
    action = basic_action(code)
    if tag in PSEUDONYM_TAGS and action in ("Z", "D"):
        return "D"
    if action == "U" and profile.retain_uids:
        return "K"
    if profile.retain_patient_characteristics and tag in PATIENT_CHARACTERISTICS:
        return "K"
    if profile.retain_device_identity and tag in DEVICE_IDENTITY:
        return "K"
    if profile.retain_institution_identity and tag in INSTITUTION_IDENTITY:
        return "K"
    if profile.clean_descriptors and tag in DESCRIPTORS and vr in TEXT_VRS:
        return "C"
    if profile.retain_longitudinal_temporal and tag not in BIRTH:
        if vr in ("DA", "DT"):
            return "C"
        if vr == "TM":
            return "K"
    return action
