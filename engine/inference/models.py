"""What a model declaration says (config/models.yaml) and what every model client offers.

A model is named and versioned; its kind says how it is reached: `builtin` (the reference
model), `python` (an in-process plugin from the `radbridge.models` entry point group, run in a
worker process), `oip` (Open Inference Protocol / KServe v2 REST: tensors) or `upload` (the
de-identified study posted as DICOM: multipart/related or STOW-RS, answered in JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from engine.config.tls import ClientTls
from engine.core.result import Result


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Window(_Strict):
    center: float = Field(description="Window centre in the modality's units (Hounsfield units for CT).")
    width: float = Field(gt=0, description="Window width; values outside are clipped, then scaled to 0..1.")


class Preprocessing(_Strict):
    """How the engine turns a series into the tensor a model takes."""

    window: Window | None = Field(None, description="Intensity window applied after the rescale to modality units.")
    spacing: tuple[float, float, float] | None = Field(
        None, description="Voxel spacing in mm (slice, row, column) to resample to before `shape`."
    )
    shape: tuple[int, int, int] | None = Field(
        None, description="Tensor shape (slices, rows, columns) the volume is resampled to."
    )
    dtype: Literal["float32", "float16", "uint8", "int16"] = Field("float32", description="Tensor element type.")
    series: Literal["largest", "thinnest"] = Field(
        "largest", description="Which series of the study is the model's input: most instances or thinnest slices."
    )


class Threshold(_Strict):
    critical: float = Field(ge=0, le=1, description="Score from which the finding is critical (raises priority).")
    report: float = Field(0.0, ge=0, le=1, description="Score below which the finding is left out of clinical output.")


class OAuth2(_Strict):
    token_url: str = Field(description="OAuth2 token endpoint (client credentials grant).")
    client_id: str
    client_secret: SecretStr = Field(description="Write `${SECRET}`, never the value.")
    scope: str | None = None


class ModelAuth(_Strict):
    bearer: SecretStr | None = Field(None, description="Static token sent as `Authorization: Bearer`; `${TOKEN}`.")
    oauth2: OAuth2 | None = Field(None, description="OAuth2 client credentials; the token is cached until it expires.")

    @model_validator(mode="after")
    def _one(self) -> ModelAuth:
        if (self.bearer is None) == (self.oauth2 is None):
            raise ValueError("auth needs exactly one of bearer or oauth2")
        return self


class _Model(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Model name, as rules refer to it.")
    version: str = Field(min_length=1, description="Model version; each version is governed on its own.")
    external: bool = Field(
        False, description="The model runs outside the hospital: it only ever receives de-identified data."
    )
    initial_state: Literal["shadow", "active"] = Field(
        "shadow",
        description="State of a version the registry has not seen: new versions start in shadow (results stored, "
        "no clinical output). Only a demo or validated site configuration says active.",
    )
    evidence: str | None = Field(None, description="Where this version's validation evidence lives (URL or document).")
    timeout_s: float = Field(300, gt=0, description="A job running longer than this fails (and is retried).")
    max_attempts: int = Field(3, ge=1, description="Attempts before a job is dead-lettered.")
    concurrency: int = Field(1, ge=1, description="Jobs of this model that run at once, across the engine.")
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    thresholds: dict[str, Threshold] = Field(
        default_factory=dict, description="Per finding code: critical and report thresholds (changes are audited)."
    )


class BuiltinModel(_Model):
    kind: Literal["builtin"]


class PythonModel(_Model):
    kind: Literal["python"]
    entry_point: str = Field(description="Name in the `radbridge.models` entry point group.")
    options: dict[str, object] = Field(default_factory=dict, description="Passed to the model's constructor.")


class _HttpModel(_Model):
    url: str = Field(description="Base URL of the model server.")
    tls: ClientTls | None = None
    auth: ModelAuth | None = None

    @model_validator(mode="after")
    def _https_outside(self) -> _HttpModel:
        if self.external and not self.url.startswith("https://"):
            raise ValueError("an external model is reached over https only")
        return self


class OipModel(_HttpModel):
    kind: Literal["oip"]
    model_name: str = Field(description="Name the server knows the model by: POST {url}/v2/models/{model_name}/infer.")
    input_name: str = Field("input", description="Name of the input tensor.")
    output_name: str | None = Field(None, description="Output tensor holding the scores; the first when omitted.")
    labels: list[Label] = Field(description="Finding for each score in the output tensor, in order.")


class Label(_Strict):
    system: str
    code: str
    display: str


class UploadModel(_HttpModel):
    kind: Literal["upload"]
    mode: Literal["multipart", "stow"] = Field(
        "multipart", description="POST the study as multipart/related DICOM, or STOW-RS to {url}/studies."
    )
    result: Literal["sync", "poll", "callback"] = Field(
        "sync", description="JSON result in the response, polled at the URL it names, or posted back to the engine."
    )
    poll_s: float = Field(5, gt=0, description="Poll interval for result: poll.")


OipModel.model_rebuild()

ModelConfig = Annotated[BuiltinModel | PythonModel | OipModel | UploadModel, Field(discriminator="kind")]


class ModelsFile(_Strict):
    models: list[ModelConfig] = Field(default_factory=list)


@dataclass(frozen=True)
class StudyInput:
    """What a model is given: the study's instances (Part 10 bytes; de-identified for an external
    model) and non-identifying routing facts. `job_id` names the request at the model server."""

    job_id: str
    instances: list[bytes]
    facts: dict[str, str] = field(default_factory=dict)  # modality, body_part, procedure_code


@dataclass(frozen=True)
class ModelOutput:
    result: Result
    raw: bytes  # the model's own answer, kept sealed with the job


class ModelClient(Protocol):
    async def infer(self, study: StudyInput) -> ModelOutput:
        """Run the model. Raise engine.core.errors.RetryableError (try again later) or PermanentError."""
        ...

    async def close(self) -> None: ...
