"""Map UID pseudonyms back to the originals in results (model output JSON, DICOM SR/SEG) with a crosswalk.

The crosswalk is the `uids` dict of de-identification outcomes (pseudonym -> original), unsealed by the
caller. Pseudonyms are '2.25.<integer>' UIDs; inside longer strings (URLs, references) they are replaced
only as whole UIDs, never as a prefix of a longer one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["reidentify_dataset", "reidentify_uids"]

_UID = re.compile(r"(?<![0-9.])2\.25\.\d{1,39}(?![0-9])")


def _text(value: str, crosswalk: Mapping[str, str]) -> str:
    if value in crosswalk:
        return crosswalk[value]
    if "2.25." not in value:
        return value
    return _UID.sub(lambda m: crosswalk.get(m.group(0), m.group(0)), value)


def reidentify_uids(obj: object, crosswalk: Mapping[str, str]) -> object:
    """A copy of a JSON-like structure (dict, list, tuple, str; other scalars as they are) with every
    pseudonym UID, in values and keys, replaced by its original."""
    if isinstance(obj, str):
        return _text(obj, crosswalk)
    if isinstance(obj, Mapping):
        return {
            (_text(k, crosswalk) if isinstance(k, str) else k): reidentify_uids(v, crosswalk) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [reidentify_uids(v, crosswalk) for v in obj]
    if isinstance(obj, tuple):
        return tuple(reidentify_uids(v, crosswalk) for v in obj)
    return obj


def _walk(ds: Dataset, crosswalk: Mapping[str, str]) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or ():
                _walk(item, crosswalk)
        elif elem.VR == "UI" and elem.value:
            if isinstance(elem.value, MultiValue | list):
                elem.value = [crosswalk.get(str(v), str(v)) for v in elem.value]
            else:
                elem.value = crosswalk.get(str(elem.value), str(elem.value))


def reidentify_dataset(ds: Dataset, crosswalk: Mapping[str, str]) -> Dataset:
    """A copy of `ds` (file meta included) whose UI values found in the crosswalk are the originals again."""
    out = copy.deepcopy(ds)
    _walk(out, crosswalk)
    meta = getattr(out, "file_meta", None)
    if meta is not None:
        _walk(meta, crosswalk)
    return out
