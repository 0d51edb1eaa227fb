"""The built-in reference model `head-ct-hyperdensity` 1.0.0: flags intracranial hyperdense regions
on a non-contrast head CT (possible acute haemorrhage), so the engine works end to end without a
model server. Reference implementation for integration testing; not a medical device; not for
clinical use.

Algorithm, on the chosen CT series in Hounsfield units (HU) at native resolution:
1. Denoise: median filter over 3 x 3 pixels in plane (DENOISE).
2. Bone: HU > BONE_HU (200). The intracranial space is what the bone encloses, slice by slice
   (2-D hole filling after a closing that bridges gaps up to SKULL_GAP_MM, 2 mm); brain is the
   intracranial voxels within BRAIN_HU (0..100). Less than MIN_BRAIN_ML (100 mL) of brain: the
   series is not a head CT (PermanentError).
3. Candidates: brain voxels within BLOOD_HU (50..90, acute blood), minus the neighbourhood of bone
   (BONE_MARGIN_MM, 2 mm in plane, and BONE_MARGIN_SLICES, 1 slice, up and down): thick slices and
   the scanner's blur average bone into the voxels next to it, which then look like blood (the
   inner table of the skull, calcifications).
4. Connected components with 6-connectivity (faces only): with 5 mm slices a diagonal neighbour is
   far away, and face connectivity keeps isolated noise voxels from chaining onto a region.
   Volume = voxels x voxel volume (mL). Regions of MIN_COMPONENT_ML (0.5 mL) or more are reported.
5. Score = 1 / (1 + exp(-(V - SCORE_MIDPOINT_ML) / SCORE_SCALE_ML)), V the largest region's volume
   in mL (midpoint 2 mL, scale 1 mL): 0.5 mL -> 0.18, 2 mL -> 0.50, 5 mL -> 0.95. A finding
   (SNOMED CT 1386000 |Intracranial hemorrhage (disorder)|) is critical at CRITICAL_SCORE (0.5)
   or above unless the model's thresholds say otherwise; suggested priority: stat when critical,
   urgent for a reported finding below it, routine without one.

The finding points at the series and at the instances (slices) holding the largest region; its
measurements are that region's volume and mean density and the total volume of reported regions.
The raw output is JSON: thresholds used, brain volume, score, and the largest components.
Compute runs in the same worker-process runner as plugin models (engine.inference.inprocess).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from engine.core.errors import ConfigError, PermanentError
from engine.core.result import Finding, Measurement, Priority, Result
from engine.inference.inprocess import ProcessModelRunner
from engine.inference.models import BuiltinModel, ModelOutput, StudyInput
from engine.inference.pixels import Volume, load_series

NAME = "head-ct-hyperdensity"
VERSION = "1.0.0"
DISCLAIMER = "Reference implementation for integration testing; not a medical device; not for clinical use."
SNOMED = "http://snomed.info/sct"
FINDING_CODE = "1386000"  # SNOMED CT |Intracranial hemorrhage (disorder)|
FINDING_DISPLAY = "Intracranial hemorrhage"
HU_UNIT = "[hnsf'U]"  # UCUM Hounsfield unit

BLOOD_HU = (50.0, 90.0)
BRAIN_HU = (0.0, 100.0)
BONE_HU = 200.0
BONE_MARGIN_MM = 2.0
BONE_MARGIN_SLICES = 1
SKULL_GAP_MM = 2.0
DENOISE = (1, 3, 3)
MIN_BRAIN_ML = 100.0
MIN_COMPONENT_ML = 0.5
SCORE_MIDPOINT_ML = 2.0
SCORE_SCALE_ML = 1.0
CRITICAL_SCORE = 0.5
COMPONENTS_IN_RAW = 10


@dataclass(frozen=True)
class Params:
    """The detector's thresholds; the defaults are the module's constants."""

    blood_low_hu: float = BLOOD_HU[0]
    blood_high_hu: float = BLOOD_HU[1]
    brain_low_hu: float = BRAIN_HU[0]
    brain_high_hu: float = BRAIN_HU[1]
    bone_hu: float = BONE_HU
    bone_margin_mm: float = BONE_MARGIN_MM
    bone_margin_slices: int = BONE_MARGIN_SLICES
    skull_gap_mm: float = SKULL_GAP_MM
    min_brain_ml: float = MIN_BRAIN_ML
    min_component_ml: float = MIN_COMPONENT_ML
    score_midpoint_ml: float = SCORE_MIDPOINT_ML
    score_scale_ml: float = SCORE_SCALE_ML
    critical_score: float = CRITICAL_SCORE


DEFAULT_PARAMS = Params()


@dataclass(frozen=True)
class Detection:
    result: Result
    details: dict[str, Any]  # what the raw output holds


def score_of(volume_ml: float, params: Params = DEFAULT_PARAMS) -> float:
    return 1.0 / (1.0 + math.exp(-(volume_ml - params.score_midpoint_ml) / params.score_scale_ml))


def detect(volume: Volume, params: Params = DEFAULT_PARAMS) -> Result:
    """The model's answer for one CT volume (pure: no I/O)."""
    return analyse(volume, params).result


def analyse(volume: Volume, params: Params = DEFAULT_PARAMS) -> Detection:
    if volume.modality != "CT":
        raise PermanentError(f"modality {volume.modality or '(none)'} is not CT")
    hu = ndimage.median_filter(volume.array, size=DENOISE)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    bone = hu > params.bone_hu
    brain = _intracranial(bone, volume.spacing, params) & (hu >= params.brain_low_hu) & (hu <= params.brain_high_hu)
    brain_ml = float(brain.sum()) * voxel_ml
    if brain_ml < params.min_brain_ml:
        raise PermanentError(
            f"no intracranial region found ({brain_ml:.0f} mL enclosed by bone, {params.min_brain_ml:g} needed): "
            "not a head CT?"
        )
    candidates = brain & (hu >= params.blood_low_hu) & (hu <= params.blood_high_hu)
    candidates &= ~_near(bone, volume.spacing, params)
    labels, count = ndimage.label(candidates, structure=ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    components = _largest_components(labels, sizes, volume, voxel_ml)
    kept = sizes * voxel_ml >= params.min_component_ml
    reported = [c for c in components if c["volume_ml"] >= params.min_component_ml]
    total_ml = float(sizes[kept].sum()) * voxel_ml
    largest_ml = components[0]["volume_ml"] if components else 0.0
    score = round(score_of(largest_ml, params), 4)
    details = {
        "model": NAME, "version": VERSION, "params": asdict(params), "voxel_ml": voxel_ml,
        "brain_ml": round(brain_ml, 1), "largest_ml": largest_ml, "score": score, "reported": int(kept.sum()),
        "total_ml": round(total_ml, 3), "components": components,
    }  # fmt: skip
    if not reported:
        summary = f"No intracranial hyperdense region of {params.min_component_ml:g} mL or more. {DISCLAIMER}"
        return Detection(Result(model=NAME, version=VERSION, summary=summary, disclaimer=DISCLAIMER), details)
    top = reported[0]
    critical = score >= params.critical_score
    finding = Finding(
        system=SNOMED,
        code=FINDING_CODE,
        display=FINDING_DISPLAY,
        score=score,
        critical=critical,
        measurements=[
            Measurement(name="volume", value=top["volume_ml"], unit="mL"),
            Measurement(name="mean density", value=top["mean_hu"], unit=HU_UNIT),
            Measurement(name="total volume", value=round(total_ml, 3), unit="mL"),
        ],
        body_site="intracranial",
        series_uid=volume.series_uid,
        instance_uids=[volume.sop_uids[k] for k in top["slices"]],
    )
    more = f"; {int(kept.sum())} regions, {total_ml:.1f} mL in total" if kept.sum() > 1 else ""
    summary = (
        f"Possible acute intracranial haemorrhage: hyperdense region of {top['volume_ml']:.1f} mL "
        f"(mean {top['mean_hu']:.0f} HU) on {len(top['slices'])} slice(s){more}. {DISCLAIMER}"
    )
    priority: Priority = "stat" if critical else "urgent"
    result = Result(
        model=NAME, version=VERSION, findings=[finding], summary=summary, suggested_priority=priority,
        disclaimer=DISCLAIMER,
    )  # fmt: skip
    return Detection(result, details)


def _largest_components(labels: np.ndarray, sizes: np.ndarray, volume: Volume, voxel_ml: float) -> list[dict[str, Any]]:
    """The largest components, largest first: volume, mean density (of the unfiltered HU) and slices."""
    boxes = ndimage.find_objects(labels)
    out = []
    for i in np.argsort(-sizes, kind="stable")[:COMPONENTS_IN_RAW]:  # label i + 1
        inside = labels[boxes[i]] == i + 1
        first = boxes[i][0].start
        out.append({
            "volume_ml": round(float(sizes[i]) * voxel_ml, 3),
            "mean_hu": round(float(volume.array[boxes[i]][inside].mean()), 1),
            "slices": [first + int(k) for k in np.flatnonzero(inside.any(axis=(1, 2)))],
        })  # fmt: skip
    return out


def _intracranial(bone: np.ndarray, spacing: tuple[float, float, float], params: Params) -> np.ndarray:
    """What the bone encloses, slice by slice (the skull is a ring in each axial slice; a 3-D fill
    would leak through the foramen magnum and count the top and bottom slices as outside)."""
    gap = max(1, round(params.skull_gap_mm / 2 / min(spacing[1:])))  # closing radius in pixels
    ring = ndimage.generate_binary_structure(2, 1)
    out = np.zeros_like(bone)
    for k in range(bone.shape[0]):
        if bone[k].any():
            closed = ndimage.binary_closing(bone[k], structure=ring, iterations=gap, border_value=0)
            out[k] = ndimage.binary_fill_holes(closed) & ~bone[k]
    return out


def _near(bone: np.ndarray, spacing: tuple[float, float, float], params: Params) -> np.ndarray:
    """Bone dilated by an in-plane disc of bone_margin_mm, across bone_margin_slices up and down."""
    ry, rx = (int(params.bone_margin_mm // s) for s in spacing[1:])
    rz = params.bone_margin_slices
    if rx == ry == rz == 0:
        return bone
    y, x = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    disc = (y * spacing[1]) ** 2 + (x * spacing[2]) ** 2 <= params.bone_margin_mm**2 + 1e-9
    footprint = np.broadcast_to(disc, (2 * rz + 1, *disc.shape))
    return ndimage.binary_dilation(bone, structure=footprint)


def run_reference(instances: list[bytes], series: Literal["largest", "thinnest"], params: Params) -> ModelOutput:
    """Worker side: decode the chosen CT series and detect."""
    volume = load_series(instances, series, require_modality="CT")
    detection = analyse(volume, params)
    return ModelOutput(detection.result, json.dumps(detection.details, sort_keys=True).encode())


class ReferenceModel:
    """ModelClient of the built-in model; compute runs in worker processes (ProcessModelRunner)."""

    def __init__(self, config: BuiltinModel | None = None, *, runner: ProcessModelRunner | None = None) -> None:
        config = config or BuiltinModel(kind="builtin", name=NAME, version=VERSION)
        if (config.name, config.version) != (NAME, VERSION):
            raise ConfigError(
                f"built-in model is {NAME} {VERSION}; the configuration names {config.name} {config.version}"
            )
        pre = config.preprocessing
        if pre.window or pre.spacing or pre.shape or pre.dtype != "float32":
            raise ConfigError(f"model {NAME}: reads native Hounsfield units; preprocessing may only choose the series")
        threshold = config.thresholds.get(FINDING_CODE)
        self.params = Params(critical_score=threshold.critical) if threshold else DEFAULT_PARAMS
        self._series = pre.series
        self._runner = runner or ProcessModelRunner(NAME, max_workers=config.concurrency, timeout_s=config.timeout_s)

    async def infer(self, study: StudyInput) -> ModelOutput:
        return await self._runner.run(run_reference, list(study.instances), self._series, self.params)

    async def close(self) -> None:
        await self._runner.close()
