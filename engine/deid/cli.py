"""De-identify a folder of DICOM files (`radbridge deid IN_DIR OUT_DIR --profile FILE`) and load profiles.

The output mirrors the input tree, but names are replaced, since file and folder names often carry PHI:
each folder becomes 'd-' + a keyed hash of its relative path, each file the SOP Instance UID pseudonym +
'.dcm'. Blocked and skipped files are listed by their walk index and a keyed hash of their relative path.
OUT_DIR/deid-report.json lists every action taken per file (tags and action codes, never values), the
totals per action code and the method; the UID crosswalk is returned to the caller, never written here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from engine.config.lint import validate
from engine.config.yamlpos import parse_yaml
from engine.core.errors import ConfigError, PermanentError
from engine.deid.dicom import DicomDeidentifier
from engine.deid.profile import DeidProfile
from engine.deid.report import FolderReport, method

__all__ = ["REPORT_NAME", "deid_folder", "load_profile"]

REPORT_NAME = "deid-report.json"
_DICOMDIR = "1.2.840.10008.1.3.10"


def load_profile(path: Path | None) -> DeidProfile:
    """The profile in a YAML file (the DeidProfile fields at top level); the defaults when `path` is None.
    Raises ConfigError with one `file:line:col: message` per problem."""
    if path is None:
        return DeidProfile()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the de-identification profile ({type(exc).__name__})") from exc
    doc, problems = parse_yaml(text, str(path))
    if doc is None or problems:
        raise ConfigError("\n".join(str(d) for d in problems))
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1:1: a de-identification profile is a mapping of settings")
    profile, diagnostics = validate(DeidProfile, data, doc, str(path))
    if profile is None:
        raise ConfigError("\n".join(str(d) for d in diagnostics))
    return profile


def _hash(key: bytes, project: str, text: str) -> str:
    return hmac.new(key, f"path\x00{project}\x00{text}".encode(), hashlib.sha256).hexdigest()[:16]


def deid_folder(
    in_dir: Path, out_dir: Path, profile: DeidProfile, key: bytes, project: str, *, progress: bool = True,
    patient: Callable[[str], None] | None = None,
) -> FolderReport:
    """De-identify every DICOM file under `in_dir` into `out_dir`; `project` overrides `profile.project`.
    `patient` is told the original Patient ID of each file written (for the accounting of disclosures)."""
    if not in_dir.is_dir():
        raise PermanentError("input folder does not exist or is not a folder")
    if out_dir.resolve().is_relative_to(in_dir.resolve()):
        raise PermanentError("the output folder must not be inside the input folder")
    profile = profile.model_copy(update={"project": project})
    deid = DicomDeidentifier(profile, key)
    report = FolderReport(method=method(profile))
    paths = sorted(p for p in in_dir.rglob("*") if p.is_file())
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("de-identifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("deid", total=len(paths))
        for index, path in enumerate(paths):
            rel = path.relative_to(in_dir)
            where = {"index": index, "path_hash": _hash(key, project, rel.as_posix())}
            written = _one(deid, path, rel, out_dir, where, report, key, project)
            if written is not None and patient is not None:
                patient(written)
            bar.advance(task)
    report.report_path = out_dir / REPORT_NAME
    report.report_path.write_text(json.dumps(report.to_json(profile), indent=2, sort_keys=False) + "\n")
    return report


def _one(
    deid: DicomDeidentifier,
    path: Path,
    rel: Path,
    out_dir: Path,
    where: dict[str, object],
    report: FolderReport,
    key: bytes,
    project: str,
) -> str | None:
    """De-identify one file; returns the original Patient ID when a file was written."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        report.skipped.append({**where, "note": "not a DICOM Part 10 file"})
        return None
    except Exception as exc:  # a damaged file must not stop the run: it is reported, never copied
        report.skipped.append({**where, "note": f"unreadable DICOM file ({type(exc).__name__})"})
        return None
    if str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) == _DICOMDIR:
        report.skipped.append({**where, "note": "DICOMDIR skipped: it indexes the original file names"})
        return None
    try:
        outcome = deid.apply(ds)
    except PermanentError as exc:
        report.blocked.append({**where, "reason": str(exc)})
        return None
    except Exception as exc:  # unexpected content: blocked (never sent), the type is enough to investigate
        report.blocked.append({**where, "reason": f"de-identification failed ({type(exc).__name__})"})
        return None
    if outcome.dataset is None:
        report.blocked.append({**where, "reason": outcome.blocked})
        return None
    folder = out_dir.joinpath(*[f"d-{_hash(key, project, p.as_posix())}" for p in reversed(rel.parents[:-1])])
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{outcome.dataset.get('SOPInstanceUID', '') or _hash(key, project, rel.as_posix())}.dcm"
    target = folder / name
    try:
        outcome.dataset.save_as(target, enforce_file_format=True)
    except Exception as exc:  # a half-written file would be an unchecked output: remove it
        target.unlink(missing_ok=True)
        report.blocked.append({**where, "reason": f"cannot be written ({type(exc).__name__})"})
        return None
    report.uids.update(outcome.uids)
    report.files.append(
        {
            **where,
            "output": target.relative_to(out_dir).as_posix(),
            "method": report.method,
            "actions": [list(a) for a in outcome.actions],
        }
    )
    return str(ds.get("PatientID", "") or "")
