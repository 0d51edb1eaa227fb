"""One place that turns a model declaration into its client, by kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.inference.models import ModelClient, ModelConfig, Preprocessing


def tensor(instances: list[bytes], pre: Preprocessing) -> np.ndarray:
    """The input tensor of a tensor model (OIP): the chosen series, resampled, windowed, typed."""
    from engine.inference.pixels import load_series, prepare

    return prepare(load_series(instances, pre.series), pre)


def build_client(model: ModelConfig, root: Path) -> ModelClient:
    if model.kind == "builtin":
        from engine.inference.reference import ReferenceModel

        return ReferenceModel(model)
    if model.kind == "python":
        from engine.inference.inprocess import PythonModelClient

        return PythonModelClient(model)
    if model.kind == "oip":
        from engine.inference.http.oip import OipClient

        return OipClient(model, tensor, root=root)
    from engine.inference.http.upload import UploadClient

    return UploadClient(model, root=root)
