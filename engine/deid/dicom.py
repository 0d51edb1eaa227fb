"""DICOM de-identification: PS3.15 Annex E Basic Profile + options applied to a pydicom Dataset.

Every attribute listed in Table E.1-1 gets the action `options.resolve` picks, at every nesting level:
sequences that stay (unlisted, K, U, C) are walked item by item. Attributes the table does not list are
kept, as the standard allows. Private attributes are removed unless the Retain Safe Private option keeps
them by creator and offset (their private creator stays with them). Images that may carry burned-in text
are cleaned by region rules or blocked before any header work (see pixels.py).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from engine.core.errors import KeyMaterialError, PermanentError
from engine.deid.actions import clean_text, dummy_value, generalise_age, zero
from engine.deid.options import PATIENT_AGE, PATIENT_ID, PATIENT_NAME, resolve
from engine.deid.pixels import PixelCleanError, burned_in_reason, clean_regions, find_rule
from engine.deid.profile import DeidProfile
from engine.deid.pseudonyms import (
    UidMapper,
    day_shift,
    patient_pseudonym,
    shift_da,
    shift_dt,
    uid_pseudonym,
)
from engine.deid.report import set_method_attributes
from engine.deid.table import load_table

__all__ = ["DeidOutcome", "DicomDeidentifier"]

# File meta attributes naming the sending/receiving applications or carrying private data: always removed.
_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


@dataclass
class DeidOutcome:
    """`dataset` is the de-identified copy (None when blocked); `actions` pairs an attribute (keyword path
    or tag) with the action applied; `uids` is the crosswalk pseudonym -> original for the caller to seal."""

    dataset: Dataset | None
    blocked: str | None = None
    actions: list[tuple[str, str]] = field(default_factory=list)
    uids: dict[str, str] = field(default_factory=dict)


@dataclass
class _Run:
    """State of one `apply`: the patient's pseudonym and shift, the UID mapper, the actions so far."""

    patient: str
    shift: int
    uids: UidMapper
    actions: list[tuple[str, str]] = field(default_factory=list)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _map_values(elem: DataElement, fn: Callable[[str], str]) -> None:
    if isinstance(elem.value, MultiValue | list):
        elem.value = [fn(str(v)) for v in elem.value]
    elif elem.value not in (None, ""):
        elem.value = fn(str(elem.value))


class DicomDeidentifier:
    """Applies one profile under one key (at least 16 bytes; the keyring derives it per project).
    Thread-safe: `apply` keeps its state in a per-call run."""

    def __init__(self, profile: DeidProfile, key: bytes) -> None:
        if len(key) < 16:
            raise KeyMaterialError("de-identification key must be at least 16 bytes")
        self.profile = profile
        self._key = key
        self._table = load_table(profile.table_edition)
        self._allowed = frozenset(w.upper() for w in profile.descriptor_allow_list)
        self._safe = (
            {(s.group, s.offset, s.creator.strip()) for s in profile.safe_private}
            if profile.retain_safe_private
            else set()
        )

    # -- entry points

    def apply(self, ds: Dataset) -> DeidOutcome:
        """De-identify a copy of `ds`; the input is left untouched."""
        ds = copy.deepcopy(ds)
        cleaned = False
        reason = burned_in_reason(ds, self.profile.burned_in)
        if reason is not None:
            cfg = self.profile.burned_in
            if cfg.mode == "block":
                return DeidOutcome(None, f"{reason}; burned_in mode is 'block'")
            rule = find_rule(ds, cfg)
            if rule is None:
                shape = f"modality {ds.get('Modality', '?')}, {ds.get('Rows', '?')}x{ds.get('Columns', '?')}"
                return DeidOutcome(None, f"{reason}; no region rule matches ({shape})")
            try:
                clean_regions(ds, rule)
            except PixelCleanError as exc:
                return DeidOutcome(None, str(exc))
            cleaned = True
        run = self._start(ds)
        if cleaned:
            run.actions.append(("PixelData", "C"))
        self._walk(ds, "", run)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            self._walk(meta, "", run)
            for tag in _META_REMOVED:
                if tag in meta:
                    run.actions.append((meta[tag].keyword or _tag_text(tag), "X"))
                    del meta[tag]
        set_method_attributes(ds, self.profile, cleaned)
        return DeidOutcome(ds, None, run.actions, dict(run.uids.crosswalk))

    def apply_bytes(self, part10: bytes) -> tuple[bytes | None, DeidOutcome]:
        """De-identify a Part 10 file; (None, outcome) when blocked."""
        try:
            ds = pydicom.dcmread(io.BytesIO(part10))
        except (InvalidDicomError, EOFError, ValueError) as exc:
            raise PermanentError(f"not a readable DICOM Part 10 file ({type(exc).__name__})") from exc
        outcome = self.apply(ds)
        if outcome.dataset is None:
            return None, outcome
        out = io.BytesIO()
        outcome.dataset.save_as(out, enforce_file_format=True)
        return out.getvalue(), outcome

    # -- one dataset

    def _start(self, ds: Dataset) -> _Run:
        """The patient key: Patient ID, else the study (an id-less patient is linked within its study only)."""
        pid = str(ds.get("PatientID", "") or "").strip()
        if not pid:
            pid = "study:" + str(ds.get("StudyInstanceUID", "") or ds.get("SOPInstanceUID", ""))
        p = self.profile
        return _Run(
            patient=patient_pseudonym(self._key, p.project, pid),
            shift=day_shift(self._key, p.project, pid),
            uids=UidMapper(self._key, p.project),
        )

    def _walk(self, ds: Dataset, prefix: str, run: _Run) -> None:
        self._private(ds, prefix, run)
        for elem in list(ds):
            tag = int(elem.tag)
            if elem.tag.is_private:
                continue  # handled above: what is left was kept
            code = self._table.lookup(tag)
            name = prefix + (elem.keyword or _tag_text(tag))
            if code is None:
                if elem.VR == "SQ":
                    self._items(elem, name, run)
                continue
            action = resolve(tag, elem.VR, code, self.profile)
            done = self._act(ds, elem, action, run)
            run.actions.append((name, done))
            if done in ("K", "U", "C") and elem.VR == "SQ":
                self._items(elem, name, run)

    def _items(self, elem: DataElement, name: str, run: _Run) -> None:
        for item in elem.value or ():
            self._walk(item, name + ".", run)

    def _act(self, ds: Dataset, elem: DataElement, action: str, run: _Run) -> str:
        """Apply `action` to `elem` in `ds`; returns the action actually taken."""
        tag, vr = int(elem.tag), elem.VR.split(" or ")[0]
        if action == "X":
            del ds[tag]
            return "X"
        if action == "Z":
            zero(elem)
            return "Z"
        if action == "K":
            if tag == PATIENT_AGE and elem.value:
                age, changed = generalise_age(str(elem.value))
                if changed:
                    elem.value = age
                    return "C"
            return "K"
        if action == "U":
            if vr == "UI":
                _map_values(elem, run.uids)
                return "U"
            if vr == "SQ":
                return "U"  # X/Z/U*: the sequence stays; the walk replaces the UIDs inside
            zero(elem)
            return "Z"
        if action == "D":
            if tag == PATIENT_NAME:
                elem.value = run.patient
            elif tag == PATIENT_ID:
                value = str(elem.value or "").strip()
                elem.value = patient_pseudonym(self._key, self.profile.project, value) if value else run.patient
            elif vr == "UI":
                _map_values(elem, run.uids)
                if not elem.value:
                    elem.value = uid_pseudonym(self._key, self.profile.project, "dummy")
            else:
                elem.value = dummy_value(vr)
            return "D"
        if action == "C":
            return self._clean(elem, vr, run)
        raise PermanentError(f"unknown de-identification action {action!r} for {_tag_text(tag)}")

    def _clean(self, elem: DataElement, vr: str, run: _Run) -> str:
        if vr in ("DA", "DT"):
            shift = shift_da if vr == "DA" else shift_dt
            values = list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]
            shifted = [shift(str(v), run.shift) for v in values if v not in (None, "")]
            if any(s is None for s in shifted):
                zero(elem)  # an unreadable date cannot be shifted: blank it
                return "Z"
            elem.value = shifted if len(shifted) > 1 else (shifted[0] if shifted else elem.empty_value)
            return "C"
        _map_values(elem, lambda v: clean_text(v, self._allowed))
        return "C"

    def _private(self, ds: Dataset, prefix: str, run: _Run) -> None:
        """Remove private attributes except safe-listed ones; a creator stays only with a kept element."""
        creators: dict[tuple[int, int], str] = {}
        for elem in ds:
            if elem.tag.is_private and 0x10 <= elem.tag.element <= 0xFF:
                creators[(elem.tag.group, elem.tag.element)] = str(elem.value or "").strip()
        kept_blocks: set[tuple[int, int]] = set()
        for elem in list(ds):
            tag = elem.tag
            if not tag.is_private or 0x10 <= tag.element <= 0xFF:
                continue
            block = tag.element >> 8
            creator = creators.get((tag.group, block))
            name = prefix + _tag_text(int(tag))
            if tag.element >= 0x1000 and (tag.group, tag.element & 0xFF, creator) in self._safe:
                kept_blocks.add((tag.group, block))
                run.actions.append((name, "K"))
                if elem.VR == "SQ":
                    self._items(elem, name, run)
            else:
                del ds[tag]
                run.actions.append((name, "X"))
        for group, block in creators:
            if (group, block) not in kept_blocks:
                del ds[(group << 16) | block]
                run.actions.append((prefix + _tag_text((group << 16) | block), "X"))
