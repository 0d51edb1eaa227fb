"""`radbridge.models` plugins run in spawned worker processes (engine.inference.inprocess).

The test plugin is a module plus a `<name>.dist-info/entry_points.txt` in a temporary folder put
on sys.path; spawned workers start with the parent's sys.path, so importlib.metadata finds the
entry point there too, exactly as it finds an installed package's."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core.errors import ConfigError, PermanentError, RetryableError
from engine.core.result import Result
from engine.inference.inprocess import ProcessModelRunner, PythonModelClient, output_of
from engine.inference.models import Preprocessing, PythonModel, StudyInput, Window
from tests.inference.volumes import head_ct
from tests.phi import MRN, NAME_FAMILY, leaks_in_bytes

PLUGIN = f"""
import json, os, time
from engine.core.errors import RetryableError


class EchoModel:
    name = "echo"
    version = "1.0.0"
    constructed = 0

    def __init__(self, options):
        EchoModel.constructed += 1
        self.options = options

    def predict(self, tensor, instances, facts):
        mode = facts.get("mode", "ok")
        if mode == "raise":
            raise ValueError("patient {NAME_FAMILY} {MRN} is unreadable")
        if mode == "retry":
            raise RetryableError("GPU of {NAME_FAMILY} busy")
        if mode == "garbage":
            return {{"findings": [{{"system": "x", "code": "1", "display": "d", "score": 7}}]}}
        if mode == "list":
            return [1, 2]
        if mode == "exit":
            os._exit(3)
        if mode == "sleep":
            open(facts["pidfile"], "w").write(str(os.getpid()))
            time.sleep(float(facts.get("seconds", "60")))
        raw = {{"pid": os.getpid(), "constructed": EchoModel.constructed, "options": self.options,
               "instances": len(instances), "facts": facts}}
        if tensor is not None:
            raw.update(shape=list(tensor.shape), dtype=str(tensor.dtype), min=int(tensor.min()), max=int(tensor.max()))
        return {{"summary": f"pid {{os.getpid()}}", "suggested_priority": "urgent", "raw": raw,
                "findings": [{{"system": "http://snomed.info/sct", "code": "1386000", "display": "d", "score": 0.25}}]}}


class OldModel(EchoModel):
    version = "0.9.0"
"""

ENTRY_POINTS = """\
[radbridge.models]
echo = rb_testplugin:EchoModel
echo-old = rb_testplugin:OldModel
broken = rb_testplugin_missing:Nothing
"""


@pytest.fixture(scope="module", autouse=True)
def plugin_on_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("plugins")
    (root / "rb_testplugin.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "rb_testplugin-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rb-testplugin\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield root


def config(entry_point: str = "echo", **fields: object) -> PythonModel:
    return PythonModel(kind="python", name="echo", version="1.0.0", entry_point=entry_point, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def runner() -> Iterator[ProcessModelRunner]:
    """One worker pool shared by the module's clients: the runner is model-agnostic."""
    shared = ProcessModelRunner("echo", max_workers=1, timeout_s=30)
    yield shared
    asyncio.run(shared.close())


def study(**facts: str) -> StudyInput:
    return StudyInput("job-1", [b"x", b"y"], {"modality": "CT", **facts})


async def test_plugin_runs_in_a_worker_process_loaded_once(runner: ProcessModelRunner) -> None:
    client = PythonModelClient(config(options={"threshold": 3}), runner=runner)
    first = await client.infer(study())
    second = await client.infer(study())
    raw = json.loads(first.raw)
    assert raw["pid"] != os.getpid() and first.result.summary == f"pid {raw['pid']}"
    assert raw["options"] == {"threshold": 3} and raw["instances"] == 2 and raw["facts"] == {"modality": "CT"}
    assert json.loads(second.raw)["pid"] == raw["pid"] and json.loads(second.raw)["constructed"] == 1
    assert (first.result.model, first.result.version, first.result.suggested_priority) == ("echo", "1.0.0", "urgent")
    assert first.result.findings[0].score == 0.25


async def test_plugin_exception_is_permanent_and_keeps_only_the_class(runner: ProcessModelRunner) -> None:
    client = PythonModelClient(config(), runner=runner)
    with pytest.raises(PermanentError) as caught:
        await client.infer(study(mode="raise"))
    assert str(caught.value) == "model echo: plugin raised ValueError"
    rendered = "".join(traceback.format_exception(caught.value))
    assert leaks_in_bytes(rendered.encode()) == [] and caught.value.__cause__ is None
    with pytest.raises(RetryableError) as retry:
        await client.infer(study(mode="retry"))
    assert str(retry.value) == "model echo: plugin asked to retry (RetryableError)"


async def test_garbage_output_is_permanent_and_names_the_field(runner: ProcessModelRunner) -> None:
    client = PythonModelClient(config(), runner=runner)
    with pytest.raises(
        PermanentError, match=r"^model echo: output field 'findings\.0\.score' is invalid \(less_than_equal\)$"
    ):
        await client.infer(study(mode="garbage"))
    with pytest.raises(PermanentError, match="^model echo: predict returned list, expected a dict$"):
        await client.infer(study(mode="list"))


async def test_killed_worker_is_retryable_and_the_pool_is_rebuilt(runner: ProcessModelRunner) -> None:
    client = PythonModelClient(config(), runner=runner)
    before = json.loads((await client.infer(study())).raw)["pid"]
    with pytest.raises(RetryableError, match="^model echo: worker process died$"):
        await client.infer(study(mode="exit"))
    after = json.loads((await client.infer(study())).raw)
    assert after["pid"] not in (before, os.getpid()) and after["constructed"] == 1  # a fresh worker


async def test_plugin_loading_problems(runner: ProcessModelRunner) -> None:
    with pytest.raises(ConfigError, match="^model echo: no entry point 'nope' in group radbridge.models$"):
        PythonModelClient(config("nope"), runner=runner)
    with pytest.raises(
        PermanentError, match="^model echo: installed plugin is version 0.9.0, the configuration says 1.0.0$"
    ):
        await PythonModelClient(config("echo-old"), runner=runner).infer(study())
    with pytest.raises(
        PermanentError, match="^model echo: entry point 'broken' failed to load \\(ModuleNotFoundError\\)$"
    ):
        await PythonModelClient(config("broken"), runner=runner).infer(study())


async def test_tensor_is_prepared_from_the_declared_preprocessing() -> None:
    series = head_ct(slices=8, size=64, pixel_mm=2.0)  # the whole head: air, skull, brain
    pre = Preprocessing(window=Window(center=40, width=80), shape=(4, 16, 16), dtype="uint8")
    client = PythonModelClient(config(preprocessing=pre, concurrency=2))
    try:
        output = await client.infer(StudyInput("job-2", series.instances, {"modality": "CT"}))
    finally:
        await client.close()
    raw = json.loads(output.raw)
    assert (raw["shape"], raw["dtype"], raw["min"], raw["max"]) == ([4, 16, 16], "uint8", 0, 255)
    assert raw["facts"] == {"modality": "CT", "tensor_spacing_mm": "10,8,8"}  # 8 x 5 mm / 4, 64 x 2 mm / 16
    with pytest.raises(RetryableError, match="^model echo: runner is closed$"):
        await client.infer(study())


async def test_a_job_past_its_timeout_is_stopped_and_retryable(tmp_path: Path) -> None:
    client = PythonModelClient(config(timeout_s=2))
    try:
        await client.infer(study())  # warm: the worker has started and loaded the plugin
        pidfile = tmp_path / "pid"
        started = time.monotonic()
        with pytest.raises(RetryableError, match="^model echo: no answer within 2 s$"):
            await client.infer(study(mode="sleep", pidfile=str(pidfile)))
        assert time.monotonic() - started < 5
        stuck = int(pidfile.read_text())
        for _ in range(50):  # the sleeping worker is killed, not left running
            if not Path(f"/proc/{stuck}").exists() or "State:\tZ" in Path(f"/proc/{stuck}/status").read_text():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the timed-out worker is still running")
        assert json.loads((await client.infer(study())).raw)["pid"] != stuck
    finally:
        await client.close()


async def test_concurrency_runs_jobs_side_by_side(tmp_path: Path) -> None:
    client = PythonModelClient(config(concurrency=2))
    try:
        slow = asyncio.create_task(client.infer(study(mode="sleep", seconds="1.5", pidfile=str(tmp_path / "a"))))
        await asyncio.sleep(0.2)
        quick = await client.infer(study())
        assert not slow.done()  # the second job did not queue behind the first
        assert json.loads(quick.raw)["pid"] != json.loads((await slow).raw)["pid"]
    finally:
        await client.close()


def test_output_validation() -> None:
    fields = {"findings": [], "summary": "ok"}
    out = output_of("echo", "1.0.0", dict(fields))
    assert out.result == Result(model="echo", version="1.0.0", summary="ok")
    assert json.loads(out.raw) == json.loads(out.result.model_dump_json())
    assert output_of("echo", "1.0.0", {"raw": b"\x00\x01"}).raw == b"\x00\x01"
    assert output_of("echo", "1.0.0", {"raw": "text"}).raw == b"text"
    assert output_of("echo", "1.0.0", Result(model="echo", version="1.0.0")).result.model == "echo"
    with pytest.raises(PermanentError, match="^model echo: output field 'version' does not match the configuration$"):
        output_of("echo", "1.0.0", {"version": "2"})
    with pytest.raises(PermanentError, match="^model echo: output field 'colour' is invalid \\(extra_forbidden\\)$"):
        output_of("echo", "1.0.0", {"colour": "red"})
    with pytest.raises(PermanentError, match="^model echo: output field 'raw' is not bytes, text or JSON$"):
        output_of("echo", "1.0.0", {"raw": {1, 2}})
