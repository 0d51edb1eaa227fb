"""The built-in reference model on synthetic head CTs with known answers."""

from __future__ import annotations

import asyncio
import json
import random
import time
import traceback
from functools import cache

import numpy as np
import pytest

from engine.core.errors import ConfigError, PermanentError
from engine.core.result import Result
from engine.inference.models import BuiltinModel, Preprocessing, StudyInput, Threshold
from engine.inference.pixels import Volume, load_series
from engine.inference.reference import (
    DISCLAIMER,
    FINDING_CODE,
    NAME,
    VERSION,
    Params,
    ReferenceModel,
    analyse,
    detect,
    score_of,
)
from tests.inference.volumes import BLEED_5ML, CALCIFICATION, SMALL_BLOB, Sphere, SyntheticSeries, head_ct
from tests.phi import leaks_in_bytes


@cache
def series(name: str) -> SyntheticSeries:
    shapes = {"normal": (), "bleed": (BLEED_5ML,), "small": (SMALL_BLOB,), "calcification": (CALCIFICATION,)}
    return head_ct(shapes=shapes[name], seed=11)


@cache
def volume(name: str) -> Volume:
    return load_series(series(name).instances)


def assert_disclaimed(result: Result) -> None:
    assert result.disclaimer == DISCLAIMER
    assert result.summary.endswith(DISCLAIMER)
    assert (result.model, result.version) == ("head-ct-hyperdensity", "1.0.0")


def test_normal_head_has_no_finding() -> None:
    detection = analyse(volume("normal"))
    assert detection.result.findings == []
    assert detection.result.suggested_priority == "routine"
    assert detection.result.summary.startswith("No intracranial hyperdense region of 0.5 mL or more.")
    assert detection.details["score"] < 0.2
    assert 500 < detection.details["brain_ml"] < 600  # the phantom's brain is about 540 mL
    assert_disclaimed(detection.result)


def test_five_ml_bleed_is_found_measured_and_located() -> None:
    truth = series("bleed")
    result = detect(volume("bleed"))
    assert_disclaimed(result)
    [finding] = result.findings
    assert (finding.system, finding.code, finding.display) == (
        "http://snomed.info/sct",
        "1386000",
        "Intracranial hemorrhage",
    )
    measured = {m.name: (m.value, m.unit) for m in finding.measurements}
    assert measured["volume"][1] == "mL"
    assert abs(measured["volume"][0] - BLEED_5ML.volume_ml) <= 0.15 * BLEED_5ML.volume_ml
    assert 55 <= measured["mean density"][0] <= 75 and measured["mean density"][1] == "[hnsf'U]"
    assert measured["total volume"] == measured["volume"]
    assert finding.score == pytest.approx(score_of(measured["volume"][0]), abs=1e-4) and finding.score > 0.9
    assert finding.critical and result.suggested_priority == "stat"
    assert finding.series_uid == truth.series_uid
    assert finding.instance_uids == truth.slices_holding(BLEED_5ML)  # the four slices it fills
    assert len(finding.instance_uids) == 4
    assert result.summary.startswith(
        f"Possible acute intracranial haemorrhage: hyperdense region of {measured['volume'][0]:.1f} mL"
    )


def test_blob_below_the_minimum_volume_is_not_a_finding() -> None:
    detection = analyse(volume("small"))
    assert detection.result.findings == [] and detection.result.suggested_priority == "routine"
    assert 0.1 < detection.details["largest_ml"] < 0.5  # seen, measured, below the 0.5 mL minimum


def test_calcification_does_not_count_thanks_to_the_bone_neighbourhood() -> None:
    assert detect(volume("calcification")).findings == []
    # the calcification's thick-slice partial volume in the slice above does look like blood:
    unguarded = detect(volume("calcification"), Params(bone_margin_slices=0))
    assert [round(m.value, 1) for m in unguarded.findings[0].measurements if m.name == "volume"] == [0.8]


def test_blood_touching_bone_is_excluded_a_documented_limit() -> None:
    hu = np.full((6, 80, 80), 35.0, np.float32)
    hu[:, :5, :] = hu[:, 75:, :] = hu[:, :, :10] = hu[:, :, 75:] = 1000.0  # a box of bone, 5 mm wall on the left
    hu[1:5, 10:70, 10:16] = 70.0  # a 3 mm layer of blood against the wall: 4 x 60 x 6 voxels of 1.25 mm3
    box = Volume(hu, (5.0, 0.5, 0.5), "1.2.3", tuple(f"1.2.3.{k}" for k in range(6)), "CT")
    small_head = Params(min_brain_ml=10.0)
    # only what lies beyond the 2 mm margin counts (the median filter rounds off two corners per slice)
    assert detect(box, small_head).findings[0].measurements[0].value == pytest.approx((4 * 60 * 2 - 8) * 1.25e-3)
    unguarded = detect(box, Params(min_brain_ml=10.0, bone_margin_mm=0.0, bone_margin_slices=0))
    # the whole layer (the median loses two corners per slice and gains two voxels where blood meets bone)
    assert unguarded.findings[0].measurements[0].value == pytest.approx(4 * 60 * 6 * 1.25e-3)


def test_shuffled_slices_give_the_same_answer() -> None:
    instances = list(series("bleed").instances)
    random.Random(7).shuffle(instances)
    assert detect(load_series(instances)) == detect(volume("bleed"))


def test_non_ct_and_non_head_input_is_refused() -> None:
    mr = head_ct(slices=4, size=32, modality="MR")
    with pytest.raises(PermanentError, match="^modality MR is not CT$"):
        detect(load_series(mr.instances))
    body = load_series(head_ct(slices=6, size=64, skull=False).instances)
    with pytest.raises(PermanentError, match="^no intracranial region found .*not a head CT\\?$"):
        detect(body)


def test_configuration_is_checked_and_thresholds_apply() -> None:
    with pytest.raises(ConfigError, match="built-in model is head-ct-hyperdensity 1.0.0"):
        ReferenceModel(BuiltinModel(kind="builtin", name=NAME, version="2.0.0"))
    with pytest.raises(ConfigError, match="preprocessing may only choose the series"):
        ReferenceModel(
            BuiltinModel(kind="builtin", name=NAME, version=VERSION, preprocessing=Preprocessing(shape=(8, 8, 8)))
        )
    strict = ReferenceModel(
        BuiltinModel(kind="builtin", name=NAME, version=VERSION, thresholds={FINDING_CODE: Threshold(critical=0.99)})
    )
    assert strict.params.critical_score == 0.99
    result = detect(volume("bleed"), strict.params)
    assert not result.findings[0].critical and result.suggested_priority == "urgent"


async def test_infer_runs_in_a_worker_process_without_stalling_the_loop() -> None:
    model = ReferenceModel()
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    tick = asyncio.create_task(ticker())
    try:
        output = await model.infer(StudyInput("job-1", series("bleed").instances, {"modality": "CT"}))
        with pytest.raises(PermanentError) as caught:
            await model.infer(StudyInput("job-2", head_ct(slices=4, size=32, modality="MR").instances))
    finally:
        done.set()
        await tick
        await model.close()
    assert output.result == detect(volume("bleed"))
    raw = json.loads(output.raw)
    assert (raw["model"], raw["version"], raw["reported"]) == (NAME, VERSION, 1)
    holding = [series("bleed").sop_uids.index(uid) for uid in series("bleed").slices_holding(BLEED_5ML)]
    assert raw["params"]["blood_low_hu"] == 50.0 and raw["components"][0]["slices"] == holding == [15, 16, 17, 18]
    assert leaks_in_bytes(output.raw) == [] and leaks_in_bytes(output.result.model_dump_json().encode()) == []
    assert max(gaps) < 0.25  # the loop kept turning while the worker decoded and computed
    assert str(caught.value) == "modality MR is not CT"
    assert caught.value.__cause__ is None  # no remote traceback chained on
    assert "_RemoteTraceback" not in "".join(traceback.format_exception(caught.value))


def test_several_regions_are_totalled_and_the_largest_is_located() -> None:
    second = Sphere((-12.5, 20.0, -25.0), 1.0, 75.0)
    truth = head_ct(shapes=(BLEED_5ML, second), seed=4)
    detection = analyse(load_series(truth.instances))
    [finding] = detection.result.findings
    measured = {m.name: m.value for m in finding.measurements}
    assert detection.details["reported"] == 2
    assert measured["total volume"] == pytest.approx(sum(c["volume_ml"] for c in detection.details["components"][:2]))
    # 1 mL over three 5 mm slices: thick-slice partial volume makes small regions less exact
    assert 0.8 <= detection.details["components"][1]["volume_ml"] <= 1.2
    assert finding.instance_uids == truth.slices_holding(BLEED_5ML)
    assert f"; 2 regions, {measured['total volume']:.1f} mL in total." in detection.result.summary
