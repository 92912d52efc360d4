"""A sweep spec: a base config (``ftmix train``'s YAML keys), a grid over any keys, groups of keys
that vary together (``linked``), repeats. Presets are specs shipped as package data
(``study/data/presets/NAME-FORM.yaml``), named ``mixtures``, ``context``, ``matrix``, with a GPU and
a CPU form. Torch-free: a spec is expanded and validated before anything runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ftmix.errors import FtmixError, first_problem
from ftmix.files import read_text
from ftmix.job.config import TrainConfig
from ftmix.plan import host

PRESETS = ("mixtures", "context", "matrix")
FORMS = ("gpu", "cpu")
# keys the study sets itself for each trial: where it writes, and that it never resumes a stranger's run
OWNED = ("output_dir", "resume")
# a study-only key: a short name for the combination (the study's mixtures a-e); never passed to train
TAG = "tag"


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="study", min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: dict = Field(default_factory=dict)
    grid: dict[str, list] = Field(default_factory=dict)
    linked: list[dict[str, list]] = Field(default_factory=list)
    repeats: int = Field(default=1, ge=1, le=100)
    time_limit_s: float = Field(default=3600.0, gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _keys(self) -> StudySpec:
        known = set(TrainConfig.model_fields) - set(OWNED)
        varied = [k for k in self.grid] + [k for group in self.linked for k in group]
        for key in list(self.base) + varied:
            if key == TAG and key not in self.base:
                continue
            if key not in known:
                hint = " (the study sets it per trial)" if key in OWNED else ""
                raise ValueError(f"unknown key {key!r}{hint}; keys are ftmix train's: see `ftmix train --help`")
        if len(varied) != len(set(varied)):
            raise ValueError("a key varies in more than one place (grid and linked, or two linked groups)")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} is an empty list")
        for n, group in enumerate(self.linked):
            lengths = {len(v) for v in group.values()}
            if len(lengths) != 1 or 0 in lengths:
                raise ValueError(f"linked[{n}]: its keys must list the same number of values (got {sorted(lengths)})")
        return self


@dataclass(frozen=True)
class Trial:
    id: str
    study: str
    repeat: int
    config: dict  # train keys (the study's own output_dir added at run time)
    tag: str | None = None
    varied: dict = field(default_factory=dict)  # the keys that name it among its study's trials

    @property
    def key(self) -> str:
        parts = [f"{k}={_short(v)}" for k, v in self.varied.items() if k != TAG]
        head = f"{self.tag}, " if self.tag else ""
        return head + (" ".join(parts) or "base") + (f" #{self.repeat}" if self.repeat else "")


def _short(value) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def trial_id(study: str, config: dict, repeat: int) -> str:
    blob = json.dumps({"study": study, "config": config, "repeat": repeat}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def expand(spec: StudySpec) -> list[Trial]:
    """Every trial: the grid's product times the linked groups' rows times the repeats, in order."""
    # each axis value: (the keys it sets, how the trial's name shows it: a linked group by its tag)
    axes: list[list[tuple[dict, dict]]] = [[({k: v}, {k: v}) for v in values] for k, values in spec.grid.items()]
    for group in spec.linked:
        keys = list(group)
        rows = [dict(zip(keys, row)) for row in zip(*group.values())]
        axes.append([(row, {TAG: row[TAG]} if TAG in row else row) for row in rows])
    trials = []
    for combo in itertools.product(*axes) if axes else [()]:
        varied: dict = {}
        shown: dict = {}
        for part, name in combo:
            varied.update(part)
            shown.update(name)
        config = {**spec.base, **varied}
        tag = config.pop(TAG, None)
        try:
            cfg = TrainConfig(**config)
        except ValidationError as exc:
            raise FtmixError(f"study {spec.name}: trial {_short(varied)}: {first_problem(exc)}") from None
        _check_mixture(spec.name, varied, cfg)
        for repeat in range(spec.repeats):
            trials.append(Trial(id=trial_id(spec.name, config, repeat), study=spec.name, repeat=repeat,
                                config=config, tag=None if tag is None else str(tag), varied=shown))
    return trials


def _check_mixture(study: str, varied: dict, cfg) -> None:
    """A mixture no GPU could run (zero: 7, offload all below stage 3) is the spec's error; one a
    particular GPU cannot (FA2 on a V100) is left to the trial (``invalid``)."""
    try:
        cfg.to_mixture()
    except FtmixError as exc:
        raise FtmixError(f"study {study}: trial {_short(varied)}: {exc}") from None


def preset_path(name: str, form: str) -> Path:
    return Path(str(resources.files("ftmix.study").joinpath(f"data/presets/{name}-{form}.yaml")))


def resolve_form(form: str) -> str:
    """``auto``: the GPU form where this machine has an NVIDIA GPU, else the CPU form."""
    if form == "auto":
        return "gpu" if host.has_nvidia_gpu() else "cpu"  # looked up when called: tests stand in a GPU
    if form not in FORMS:
        raise FtmixError(f"--form must be gpu, cpu or auto, got {form!r}")
    return form


def load_spec(ref: str, form: str = "auto") -> StudySpec:
    """A preset by name (``mixtures``, or ``mixtures:cpu`` to pick the form) or a YAML file."""
    name, _, suffix = ref.partition(":")
    if name in PRESETS and not Path(ref).exists():
        path = preset_path(name, resolve_form(suffix or form))
        text = path.read_text(encoding="utf-8")
    else:
        path = Path(ref).expanduser()
        if not path.exists():
            raise FtmixError(f"study spec {ref!r}: no such file, and not a preset ({', '.join(PRESETS)})")
        text = read_text(path, "study spec")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FtmixError(f"cannot read study spec {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FtmixError(f"study spec {path} must be a mapping (name, base, grid, linked, repeats, time_limit_s)")
    try:
        return StudySpec(**data)
    except ValidationError as exc:
        raise FtmixError(f"study spec {path}: {first_problem(exc, 'spec')}") from None


def merge_base(spec: StudySpec, overrides: Optional[dict]) -> StudySpec:
    """``key=value`` from the command line onto the spec's base (a base key the grid varies is refused)."""
    if not overrides:
        return spec
    varied = set(spec.grid) | {k for g in spec.linked for k in g}
    clash = sorted(set(overrides) & varied)
    if clash:
        verb = "varies" if len(clash) == 1 else "vary"
        raise FtmixError(f"{', '.join(clash)} {verb} in the study's grid; edit the spec to change {'it' if len(clash) == 1 else 'them'}")
    try:
        return StudySpec(**{**spec.model_dump(), "base": {**spec.base, **overrides}})
    except ValidationError as exc:
        raise FtmixError(f"override: {first_problem(exc, 'base')}") from None
