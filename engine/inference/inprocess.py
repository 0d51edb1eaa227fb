"""Models computed on this node, in worker processes: `radbridge.models` plugins and the built-in
reference model share one runner, so model compute never stalls ingest.

Why processes: model compute is CPU-bound numpy/scipy/torch work that holds the GIL for long
stretches; in a thread it would starve the event loop that receives HL7 and DICOM. Workers are
started with "spawn" (fork would copy the parent's threads and event loop state, which is unsafe)
and inherit the parent's sys.path, so a plugin importable in the parent is importable in them.

The plugin interface (the entry point names a class):

    class MyModel:
        name = "my-model"            # informative
        version = "2.1.0"            # must equal the configured version, else every job fails
        def __init__(self, options: dict[str, object]) -> None: ...   # once per worker process
        def predict(self, tensor: numpy.ndarray | None, instances: list[bytes],
                    facts: dict[str, str]) -> dict: ...

`tensor` is the series prepared per the model's `preprocessing` (pixels.prepare) when it declares
a window, spacing or shape, else None; `facts` then also holds "tensor_spacing_mm" ("z,y,x").
`predict` returns the fields of engine.core.result.Result ("model" and "version" may be
left out: they come from the configuration) plus an optional "raw" (bytes, str or JSON-able: the
model's own answer, kept sealed; the validated Result's JSON when absent).

Failures: a worker that dies (segfault, os._exit, out of memory) or a job that outlives the
model's timeout_s is a RetryableError, and the pool is rebuilt; anything a plugin raises is a
PermanentError (a RetryableError if it raised one) naming only the exception's class, since its
text may quote patient data; output that fails Result validation is a PermanentError naming the field.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import ValidationError

from engine.core.errors import ConfigError, PermanentError, RadbridgeError, RetryableError
from engine.core.result import Result
from engine.inference.models import ModelOutput, Preprocessing, PythonModel, StudyInput
from engine.inference.pixels import load_series, prepare_with_spacing

GROUP = "radbridge.models"
CLOSE_GRACE_S = 10.0  # close() lets running jobs finish this long before stopping the workers

T = TypeVar("T")


class ProcessModelRunner:
    """A pool of spawned worker processes for one model; `run` awaits a picklable module-level
    function in it. Errors come back as RetryableError / PermanentError, never with a remote traceback."""

    def __init__(self, name: str, *, max_workers: int = 1, timeout_s: float | None = None) -> None:
        self.name = name
        self.max_workers = max_workers
        self.timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def _executor(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RetryableError(f"model {self.name}: runner is closed")
        if self._pool is None:
            # workers start on demand, so an idle model costs no process
            self._pool = ProcessPoolExecutor(self.max_workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        pool = self._executor()
        try:
            future: Future[T] = pool.submit(fn, *args)
        except BrokenProcessPool:
            self._discard(pool)
            raise RetryableError(f"model {self.name}: worker process died") from None
        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            self._stop(pool)  # the only way to end a call already running in a worker
            raise RetryableError(f"model {self.name}: no answer within {self.timeout_s:g} s") from None
        except asyncio.CancelledError:
            if future.running():  # nobody waits for it any more: free the worker
                self._stop(pool)
            raise
        except BrokenProcessPool:
            self._discard(pool)
            raise RetryableError(f"model {self.name}: worker process died") from None
        except RadbridgeError as exc:
            raise exc from None  # drop the remote traceback concurrent.futures chains on
        except Exception as exc:
            raise PermanentError(f"model {self.name}: worker failed ({type(exc).__name__})") from None

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Forget a broken pool (once, however many jobs saw it break); the next run builds another."""
        pool.shutdown(wait=False, cancel_futures=True)
        if self._pool is pool:
            self._pool = None

    def _stop(self, pool: ProcessPoolExecutor) -> None:
        # concurrent.futures has no public way to end a running call before Python 3.14's terminate_workers
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
        self._discard(pool)

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True), CLOSE_GRACE_S)
        except TimeoutError:
            self._stop(pool)


@dataclass(frozen=True)
class PluginSpec:
    """What a worker needs to run one plugin model (picklable)."""

    model: str
    version: str
    entry_point: str
    options: dict[str, object] = field(default_factory=dict)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)


def needs_tensor(pre: Preprocessing) -> bool:
    return pre.window is not None or pre.spacing is not None or pre.shape is not None


_LOADED: dict[str, Any] = {}  # in each worker: plugin instances by entry point and options


def _plugin(spec: PluginSpec) -> Any:
    key = json.dumps([spec.entry_point, spec.options], sort_keys=True, default=str)
    if key in _LOADED:
        return _LOADED[key]
    what = f"model {spec.model}"
    found = list(entry_points(group=GROUP, name=spec.entry_point))
    if not found:
        raise PermanentError(f"{what}: no entry point {spec.entry_point!r} in group {GROUP}")
    try:
        factory = found[0].load()
    except Exception as exc:
        raise PermanentError(
            f"{what}: entry point {spec.entry_point!r} failed to load ({type(exc).__name__})"
        ) from None
    try:
        plugin = factory(dict(spec.options))
    except Exception as exc:
        raise PermanentError(f"{what}: plugin constructor raised {type(exc).__name__}") from None
    if not callable(getattr(plugin, "predict", None)):
        raise PermanentError(f"{what}: plugin has no predict method")
    declared = getattr(plugin, "version", None)
    if declared is not None and str(declared) != spec.version:
        raise PermanentError(f"{what}: installed plugin is version {declared}, the configuration says {spec.version}")
    _LOADED[key] = plugin
    return plugin


def run_plugin(spec: PluginSpec, instances: list[bytes], facts: dict[str, str]) -> ModelOutput:
    """Worker side: load (once per process), prepare the tensor, predict, validate."""
    plugin = _plugin(spec)
    tensor = None
    if needs_tensor(spec.preprocessing):
        volume = load_series(instances, spec.preprocessing.series)
        tensor, spacing = prepare_with_spacing(volume, spec.preprocessing)
        facts = {**facts, "tensor_spacing_mm": ",".join(f"{s:g}" for s in spacing)}
    what = f"model {spec.model}"
    try:
        answer = plugin.predict(tensor, instances, facts)
    except RetryableError as exc:
        raise RetryableError(f"{what}: plugin asked to retry ({type(exc).__name__})") from None
    except (Exception, SystemExit) as exc:  # the text may quote patient data: keep the class only
        raise PermanentError(f"{what}: plugin raised {type(exc).__name__}") from None
    return output_of(spec.model, spec.version, answer)


def output_of(model: str, version: str, answer: object) -> ModelOutput:
    """A plugin's answer validated into the canonical Result, with its raw bytes."""
    what = f"model {model}"
    if isinstance(answer, Result):
        fields, raw = answer.model_dump(), None
    elif isinstance(answer, dict):
        fields = dict(answer)
        raw = fields.pop("raw", None)
    else:
        raise PermanentError(f"{what}: predict returned {type(answer).__name__}, expected a dict")
    for key, expected in (("model", model), ("version", version)):
        if fields.setdefault(key, expected) != expected:
            raise PermanentError(f"{what}: output field '{key}' does not match the configuration")
    try:
        result = Result.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "(root)"
        raise PermanentError(f"{what}: output field '{where}' is invalid ({error['type']})") from None
    if raw is None:
        data = result.model_dump_json().encode()
    elif isinstance(raw, bytes):
        data = raw
    elif isinstance(raw, str):
        data = raw.encode()
    else:
        try:
            data = json.dumps(raw, sort_keys=True).encode()
        except (TypeError, ValueError):
            raise PermanentError(f"{what}: output field 'raw' is not bytes, text or JSON") from None
    return ModelOutput(result, data)


class PythonModelClient:
    """ModelClient for a `python` model: its plugin runs in this model's worker processes."""

    def __init__(self, config: PythonModel, *, runner: ProcessModelRunner | None = None) -> None:
        if not list(entry_points(group=GROUP, name=config.entry_point)):
            raise ConfigError(f"model {config.name}: no entry point {config.entry_point!r} in group {GROUP}")
        self.config = config
        self._spec = PluginSpec(config.name, config.version, config.entry_point, dict(config.options),
                                config.preprocessing)  # fmt: skip
        self._runner = runner or ProcessModelRunner(
            config.name, max_workers=config.concurrency, timeout_s=config.timeout_s
        )

    async def infer(self, study: StudyInput) -> ModelOutput:
        return await self._runner.run(run_plugin, self._spec, list(study.instances), dict(study.facts))

    async def close(self) -> None:
        await self._runner.close()
