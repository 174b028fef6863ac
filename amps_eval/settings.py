"""The lmms-eval wrappers' settings: one validated dataclass built from lmms-eval's `--model_args`.

The steering arguments (``alpha``, ``positions``, ``beta``, ``convention``, ``mcs_*``) are the flat,
lmms-eval spelling of `amps_eval.methods.steering.SteeringConfig`: their defaults are read from its
fields (and from `MCSSettings`' for ``mcs_*``), they are validated by it, and `steering_config`
builds it. Lists inside a model argument are ``/``-separated (``mcs_sigmas=0.05/0.1/0.2``): commas
separate the model arguments. Unknown arguments and methods are errors that say which valid one
was probably meant and list the valid ones; every run logs its settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from amps_eval.mc2.prompt import DEFAULT_INSTRUCTION_STYLE, INSTRUCTION_STYLES
from amps_eval.methods.registry import METHODS, STEERING_METHODS
from amps_eval.methods.steering_config import FLOAT32_MAX, SteeringConfig
from amps_eval.mcs.settings import MCSSettings
from amps_eval.vocabulary import DTYPES, did_you_mean, join_list, split_numbers

# Arguments lmms-eval itself always passes to a model's constructor, accepted and handled here.
LMMS_EVAL_ARGS = ("max_batch_size",)

MCS_ARGS = {"mcs_sigmas": "sigmas", "mcs_draws": "draws", "mcs_relative": "relative", "mcs_ratio": "ratio",
            "mcs_tolerance": "tolerance", "mcs_min_draws": "min_draws", "mcs_round_draws": "round_draws",
            "seed": "seed"}
"""The model arguments that make the run's `MCSSettings`: argument -> MCSSettings field (their
defaults are MCSSettings'; `tests/test_settings_once.py` checks both)."""

__all__ = ["DTYPES", "FLOAT32_MAX", "LMMS_EVAL_ARGS", "QwenSettings", "SettingsError", "WrapperSettings",
           "load_steering", "settings_class"]


class SettingsError(ValueError):
    """A model argument is unknown or has a bad value."""


@dataclass(frozen=True)
class WrapperSettings:
    pretrained: str
    device: str | None = None  # default: cuda if available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on a GPU, float32 on the CPU
    batch_size: int = 1
    attn_implementation: str | None = None
    device_map: str | None = None  # "auto" splits one model over all visible GPUs
    method: str = "none"
    fewshot_k: int = 2
    # inst / cot: "mc2_authors" (the MC2 authors' wording, between the context and the question) or
    # "appended" (after the whole question, as AMPS Eq. 8); see amps_eval.mc2.prompt
    instruction_style: str = DEFAULT_INSTRUCTION_STYLE
    # generation budget: at most max(this, the task's max_new_tokens) new tokens; generation stops
    # earlier at the model's end-of-turn / EOS tokens (amps_eval/encoding.py, PromptEncoder.stop_token_ids)
    max_new_tokens: int = 64
    cot_max_new_tokens: int = 512  # method=cot's budget, in place of max_new_tokens (the MC2 authors allow 512)
    seed: int = 0
    # steering (method=mean|mean_mcs|l2s|amps_beta0|amps): the fields of SteeringConfig, flat
    steering: str | None = None  # the file written by `amps-eval fit`
    steering_sha256: str | None = None  # optional: refuse a file with other content (and key lmms-eval's cache)
    # their defaults are SteeringConfig's, read from its class (a dataclass's defaults are class attributes)
    alpha: float = SteeringConfig.alpha
    positions: str = SteeringConfig.positions
    beta: float = SteeringConfig.beta  # mean_mcs: strength of the per-sample scaling (Eq. 9)
    convention: str = SteeringConfig.convention  # mean_mcs: sign convention of Eq. 9 (amps_eval/steering/scaling.py)
    # mean_mcs: the MCS settings, defaulting to MCSSettings' own (sigmas "/"-separated: commas
    # separate model arguments); they must equal those the steering file's anchors were made with
    mcs_sigmas: str = join_list(MCSSettings.sigmas)
    mcs_draws: int = MCSSettings.draws
    mcs_relative: bool = MCSSettings.relative
    mcs_ratio: str = MCSSettings.ratio
    mcs_tolerance: float | None = MCSSettings.tolerance  # the sequential MCS's r_v standard error target
    mcs_min_draws: int = MCSSettings.min_draws
    mcs_round_draws: int = MCSSettings.round_draws
    # mean_mcs: item cache folder (amps_eval.item_cache) to reuse and store each prompt's MCS; None: none
    item_cache: str | None = None
    diagnostics: str | None = None  # folder for per-sample steering diagnostics (JSONL)
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        methods = self.valid_methods()
        if self.method not in methods:
            raise SettingsError(f"unknown method={self.method!r}{did_you_mean(self.method, methods)}; "
                                f"valid methods: {', '.join(methods)}")
        if self.dtype not in DTYPES:
            raise SettingsError(f"dtype={self.dtype!r} is not one of {DTYPES}")
        if self.batch_size < 1:
            raise SettingsError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.instruction_style not in INSTRUCTION_STYLES:
            raise SettingsError(f"unknown instruction_style={self.instruction_style!r}; valid instruction styles: "
                                f"{', '.join(INSTRUCTION_STYLES)}")
        for name in ("max_new_tokens", "cot_max_new_tokens"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fewshot_k < 0:
            raise SettingsError(f"fewshot_k must be >= 0, got {self.fewshot_k}")
        if self.method == "fewshot" and self.fewshot_k < 1:
            raise SettingsError("method=fewshot needs fewshot_k >= 1")
        if self.device_map not in (None, "auto"):
            raise SettingsError(f"device_map must be 'auto' or unset, got {self.device_map!r}")
        steered = self.method in STEERING_METHODS
        if steered and not self.steering:
            raise SettingsError(f"method={self.method} needs steering=<file written by `amps-eval fit`>")
        if not steered and self.steering:
            raise SettingsError(f"steering= is given but method={self.method} does not steer; use one of {STEERING_METHODS}")
        self.steering_config()  # validates the steering and MCS settings
        if steered:
            self.check_steering_file()

    def check_steering_file(self) -> None:
        """Refuse a missing, changed (``steering_sha256``) or invalid steering file now, before any
        weights load (the wrapper builds its settings first); `load_steering` then checks the file
        loaded here (its one load and one sha256, `steering_file`) against the loaded model."""
        from pathlib import Path

        from amps_eval.steering.file import SteeringFile, SteeringFileError

        path = Path(self.steering)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise SettingsError(f"steering={self.steering}: the steering file {what}; pass the file written by "
                                "`amps-eval fit --out ...` (checked before the model loads)")
        digest = _pinned_digest(self)
        try:
            file = SteeringFile.load(path)
        except SteeringFileError as error:
            raise SettingsError(f"steering= argument refused: {error}") from None
        object.__setattr__(self, "_steering_file", (digest, file))  # not a field: no part of eq, repr, to_dict

    def steering_file(self) -> tuple[str, Any] | None:
        """(sha256, `SteeringFile`) of the steering file, read once when the settings were built; None
        for a method that does not steer."""
        return getattr(self, "_steering_file", None)

    def mcs_settings(self) -> MCSSettings:
        """The `MCSSettings` of the ``MCS_ARGS`` arguments (the wrapper's ``seed`` seeds the MCS noise too)."""
        values = {field: getattr(self, arg) for arg, field in MCS_ARGS.items()}
        try:
            values["sigmas"] = split_numbers(self.mcs_sigmas, "mcs_sigmas")
            return MCSSettings(**values)
        except ValueError as error:
            shown = ", ".join(f"{arg}={getattr(self, arg)!r}" for arg in MCS_ARGS)
            raise SettingsError(f"bad MCS settings ({shown}): {error}") from None

    def steering_config(self) -> SteeringConfig:
        """The run's `SteeringConfig` (method None for a method that does not steer)."""
        method = self.method if self.method in STEERING_METHODS else None
        try:
            return SteeringConfig(method, self.alpha, self.positions, self.beta, self.convention, self.mcs_settings(),
                                  self.item_cache)
        except ValueError as error:
            raise SettingsError(str(error)) from None

    @classmethod
    def valid_methods(cls) -> tuple[str, ...]:
        return tuple(m.name for m in METHODS)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_model_args(cls, **kwargs: Any) -> "WrapperSettings":
        """Build from lmms-eval's parsed `--model_args` plus the arguments it always passes."""
        kwargs = {k: v for k, v in kwargs.items() if not (k in LMMS_EVAL_ARGS)}
        names = cls.field_names()
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            if len(unknown) == 1:
                what = f"argument {unknown[0]!r}{did_you_mean(unknown[0], names)}"
            else:
                guesses = [(u, did_you_mean(u, names)[len("; did you mean "):-1]) for u in unknown]
                hints = ", ".join(f"{g} for {u!r}" for u, g in guesses if g)
                what = f"arguments {unknown}" + (f"; did you mean {hints}?" if hints else "")
            raise SettingsError(f"unknown model {what}; valid arguments: {', '.join(names)}")
        if "pretrained" not in kwargs:
            raise SettingsError("pretrained=<hub id or local folder> is required")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in kwargs:
                values[f.name] = _coerce(f.name, kwargs[f.name], f.type)
        return cls(**values)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.field_names()}


@dataclass(frozen=True)
class QwenSettings(WrapperSettings):
    """The Qwen families add the image pixel bounds of their processor (None: the checkpoint's own)."""

    min_pixels: int | None = None
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise SettingsError(f"min_pixels={self.min_pixels} exceeds max_pixels={self.max_pixels}")


def settings_class(family) -> type[WrapperSettings]:
    """The settings class of a family's wrapper: with the image-processor bounds the family declares
    (``FamilyAdapter.image_kwargs``: ``min_pixels`` / ``max_pixels``) or without."""
    if not family.image_kwargs:
        return WrapperSettings
    if set(family.image_kwargs) == {"min_pixels", "max_pixels"}:
        return QwenSettings
    raise NotImplementedError(f"no settings class declares {family.image_kwargs}")


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """lmms-eval parses `a=1` to int and `a=x` to str; bring each value to its field's type."""
    kind = str(annotation)
    if value is None or (isinstance(value, str) and value.lower() == "none" and "None" in kind):
        return None
    try:
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError
            return number
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}={value!r} is not a valid {kind.split(' ')[0]}") from None


def _pinned_digest(settings: WrapperSettings) -> str:
    """The steering file's sha256, refused when it differs from a pinned ``steering_sha256``."""
    from amps_eval.steering.file import sha256

    digest = sha256(settings.steering)
    if settings.steering_sha256 and settings.steering_sha256 != digest:
        raise SettingsError(
            f"steering file {settings.steering} has sha256 {digest}, but steering_sha256={settings.steering_sha256} "
            "was asked for: the file changed since the run was set up; refit or update steering_sha256"
        )
    return digest


def load_steering(settings: WrapperSettings, model):
    """The run's `Steering` (None for the prompt methods), checked against the loaded model."""
    from loguru import logger

    from amps_eval.methods.registry import info
    from amps_eval.methods.steering import Steering

    if settings.method not in STEERING_METHODS:
        return None
    digest, file = settings.steering_file()
    if not settings.steering_sha256:
        logger.info(f"steering file {settings.steering} sha256={digest} (pass steering_sha256= to pin it)")
    file.check_compatible(model.config, settings.pretrained, info(settings.method).file_method)
    return Steering(file, settings.steering_config(), model)
