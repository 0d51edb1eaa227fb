"""Series choice, slice order, rescale, resampling, windowing and decoding of engine.inference.pixels."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEGBaseline8Bit, RLELossless, generate_uid

from engine.core.errors import PermanentError
from engine.inference.models import Preprocessing, Window
from engine.inference.pixels import Volume, load_series, prepare, prepare_with_spacing, resample
from tests.dicomdata import make_instance, part10_bytes
from tests.inference.volumes import ct_slice, head_ct, part10
from tests.phi import leaks_in_bytes


def small(**options: object):  # type: ignore[no-untyped-def]
    return head_ct(slices=6, size=32, **options)  # type: ignore[arg-type]


def test_slices_are_ordered_by_position_not_arrival_or_instance_number() -> None:
    series = small(shuffle=True, seed=3)
    numbers = [int(dcmread(io.BytesIO(b)).InstanceNumber) for b in series.instances]
    assert numbers != sorted(numbers)  # the input really is shuffled
    volume = load_series(series.instances)
    assert volume.sop_uids == tuple(series.sop_uids)  # inferior to superior; InstanceNumber runs the other way
    assert np.array_equal(volume.array, series.hu)
    assert volume.spacing == (5.0, 0.5, 0.5)
    assert volume.series_uid == series.series_uid and volume.modality == "CT"
    assert volume.array.dtype == np.float32 and volume.array.shape == (6, 32, 32)


def test_sagittal_slices_are_ordered_along_their_normal() -> None:
    # rows along +y, columns along -z: the normal is (-1, 0, 0), so larger x comes first
    study, series_uid = generate_uid(), generate_uid()
    xs = [12.0, -3.0, 0.0, 9.0, 6.0, 3.0]
    instances = []
    for n, x in enumerate(xs, start=1):
        ds = ct_slice(np.full((4, 4), n, np.int16), z=0, number=n, study_uid=study, series_uid=series_uid)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [x, 0, 0]
        instances.append(part10(ds))
    volume = load_series(instances)
    assert [int(v) + 1024 for v in volume.array[:, 0, 0]] == [1, 4, 5, 6, 3, 2]  # x = 12, 9, 6, 3, 0, -3
    assert volume.spacing[0] == 3.0


def test_without_positions_slices_follow_instance_number() -> None:
    series = small(seed=1)
    instances = []
    for data in reversed(series.instances):
        ds = dcmread(io.BytesIO(data))
        del ds.ImagePositionPatient
        instances.append(part10(ds))
    volume = load_series(instances)
    assert volume.sop_uids == tuple(reversed(series.sop_uids))  # InstanceNumber 1 is the top slice
    assert volume.spacing == (5.0, 0.5, 0.5)  # from SliceThickness


def test_rescale_gives_exact_modality_units() -> None:
    study, series_uid = generate_uid(), generate_uid()
    stored = np.array([[0, 1], [1000, -5]], np.int16)
    instances = [
        part10(ct_slice(stored, z=0, number=1, study_uid=study, series_uid=series_uid)),
        part10(ct_slice(stored, z=5, number=2, study_uid=study, series_uid=series_uid, slope=2.0, intercept=-1000)),
    ]
    volume = load_series(instances)
    assert volume.array[0].tolist() == [[-1024.0, -1023.0], [-24.0, -1029.0]]
    assert volume.array[1].tolist() == [[-1000.0, -998.0], [1000.0, -1010.0]]  # slope applies per slice


def test_largest_and_thinnest_series() -> None:
    study = generate_uid()
    thick = head_ct(slices=8, size=16, slice_mm=5.0, study_uid=study, series_number=2)
    thin = head_ct(slices=5, size=16, slice_mm=2.0, study_uid=study, series_number=3)
    report = make_instance(study_uid=study, sop_class="1.2.840.10008.5.1.4.1.1.88.22", omit=("Rows", "Columns"))
    instances = thin.instances + [part10_bytes(report)] + thick.instances
    random.Random(5).shuffle(instances)
    assert load_series(instances, "largest").series_uid == thick.series_uid
    assert load_series(instances, "thinnest").series_uid == thin.series_uid
    assert load_series(instances, "thinnest").spacing == (2.0, 0.5, 0.5)


def test_required_modality_is_checked_before_decoding() -> None:
    ds = make_instance(transfer_syntax=JPEGBaseline8Bit)
    ds.Modality = "MR"
    with pytest.raises(PermanentError, match="^modality MR is not CT$"):
        load_series([part10_bytes(ds)], require_modality="CT")


def test_rle_compressed_series_decodes_to_the_same_values() -> None:
    series = small(transfer_syntax=RLELossless, seed=2)
    assert dcmread(io.BytesIO(series.instances[0])).file_meta.TransferSyntaxUID == RLELossless
    volume = load_series(series.instances)
    assert np.array_equal(volume.array, series.hu)


def test_undecodable_transfer_syntax_is_permanent_and_names_no_patient_data() -> None:
    ds = make_instance(transfer_syntax=JPEGBaseline8Bit)
    with pytest.raises(PermanentError) as caught:
        load_series([part10_bytes(ds)])
    message = str(caught.value)
    assert message == "series 1: transfer syntax 1.2.840.10008.1.2.4.50 (JPEG Baseline (Process 1)) cannot be decoded"
    assert leaks_in_bytes(message.encode()) == []
    assert str(ds.StudyInstanceUID) not in message and str(ds.SeriesInstanceUID) not in message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not dicom at all", "instance 0: not a readable DICOM file (InvalidDicomError)"),
        (b"", "instance 0: not a readable DICOM file (InvalidDicomError)"),
    ],
)
def test_unreadable_instances_are_permanent(data: bytes, message: str) -> None:
    with pytest.raises(PermanentError) as caught:
        load_series([data])
    assert str(caught.value) == message


def test_series_problems_are_permanent() -> None:
    with pytest.raises(PermanentError, match="^study has no image series$"):
        load_series([part10_bytes(make_instance(omit=("Rows",)))])
    study, series_uid = generate_uid(), generate_uid()
    mixed = [
        part10(ct_slice(np.zeros((4, 4), np.int16), z=0, number=1, study_uid=study, series_uid=series_uid)),
        part10(ct_slice(np.zeros((4, 8), np.int16), z=5, number=2, study_uid=study, series_uid=series_uid)),
    ]
    with pytest.raises(PermanentError, match="^series 1: slices differ in size$"):
        load_series(mixed)
    twins = [
        part10(ct_slice(np.zeros((4, 4), np.int16), z=5, number=n, study_uid=study, series_uid=series_uid))
        for n in (1, 2)
    ]
    with pytest.raises(PermanentError, match="^series 1: slices share a position$"):
        load_series(twins)


def volume_of(values: list[float]) -> Volume:
    return Volume(np.asarray(values, np.float32).reshape(1, 1, -1), (5.0, 0.5, 0.5), "1.2.3", ("1.2.3.4",), "CT")


HU = [-1000.0, 0.0, 40.0, 60.0, 80.0, 120.0, 3000.0]


@pytest.mark.parametrize(
    ("pre", "expected", "dtype"),
    [
        (Preprocessing(window=Window(center=40, width=80)), [0, 0, 0.5, 0.75, 1, 1, 1], np.float32),
        (Preprocessing(window=Window(center=40, width=80), dtype="float16"), [0, 0, 0.5, 0.75, 1, 1, 1], np.float16),
        (Preprocessing(window=Window(center=40, width=80), dtype="uint8"), [0, 0, 128, 191, 255, 255, 255], np.uint8),
        (Preprocessing(window=Window(center=40, width=80), dtype="int16"), [0, 0, 40, 60, 80, 80, 80], np.int16),
        (Preprocessing(dtype="int16"), HU, np.int16),
        (Preprocessing(), HU, np.float32),
        (Preprocessing(dtype="uint8"), [0, 64, 66, 68, 69, 71, 255], np.uint8),  # (HU + 1000) / 4000 * 255
    ],
)
def test_window_and_cast_give_exact_values(pre: Preprocessing, expected: list[float], dtype: type) -> None:
    tensor = prepare(volume_of(HU), pre)
    assert tensor.dtype == dtype
    assert tensor.ravel().tolist() == expected


def test_resample_to_spacing_then_shape_gives_exact_shape_and_spacing() -> None:
    array = np.tile(np.arange(24, dtype=np.float32)[:, None, None], (1, 64, 64))
    out, spacing = resample(array, (5.0, 0.5, 0.5), to_spacing=(2.5, 1.0, 1.0))
    assert out.shape == (48, 32, 32) and spacing == (2.5, 1.0, 1.0)
    assert out.dtype == np.float32
    assert np.all(np.diff(out[:, 0, 0]) >= 0) and out[0, 0, 0] == 0.0 and out[-1, 0, 0] == 23.0
    volume = Volume(array, (5.0, 0.5, 0.5), "1.2.3", tuple(str(i) for i in range(24)), "CT")
    tensor, spacing = prepare_with_spacing(volume, Preprocessing(spacing=(2.5, 1.0, 1.0), shape=(16, 16, 16)))
    assert tensor.shape == (16, 16, 16) and spacing == (7.5, 2.0, 2.0)
    assert prepare(volume, Preprocessing(shape=(7, 13, 50))).shape == (7, 13, 50)
    constant = Volume(np.full((24, 64, 64), 35.0, np.float32), (5.0, 0.5, 0.5), "1.2.3", (), "CT")
    assert np.all(prepare(constant, Preprocessing(shape=(10, 20, 30))) == 35.0)
