"""What every diffusers model family implements, in three steps that never mix:

1. :meth:`Family.detect` -- is this path one of my kinds? From file names, configs and safetensors headers only.
2. :meth:`Family.inspect` -- what expert would it make for this role: its latent space, whether a VAE is at hand,
   and every problem found in configs and headers (missing or corrupt files, text width vs cross-attention width,
   a motion module that does not fit its base...). No weights are loaded. Problems raise ``ValueError`` (or
   ``FileNotFoundError`` for a missing file) whose message names the role, the path and the fix; start it with
   ``inspection.who`` / :func:`~.files.who`.
3. :meth:`Family.load` -- the :class:`~confiner_core.experts.Expert`, and :meth:`Family.load_codec` -- its VAE as
   a :class:`~confiner_core.latent_spaces.Codec` (asked for only where the video is decoded with it or the chain
   bridges its latent space to another).

The registry (:mod:`.registry`) runs step 1 and 2 for every role, checks the experts against each other (latent
spaces that meet need VAEs), and only then runs step 3. A family is one module holding its configuration as data
(kinds, roles, classes, scheduler defaults); the package's own are listed in :data:`.registry.FAMILIES`, and one of
your own joins them through :func:`.registry.register_family`.

Experts a family returns expose ``networks``: the torch modules speed settings apply to (UNets, transformers, the
CLIP text encoders).
Codecs with a ``vae`` attribute get speed settings on ``vae.decoder``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ...experts import Expert
from ...latent_spaces import Codec, LatentSpace
from ...schedules import NoiseSchedule, flow_schedule, from_diffusers_config
from .files import pipeline_kind, who


@dataclass
class Inspection:
    """What a family learned about one role's path without loading weights.

    ``latent_space``: the space the expert denoises in. ``has_vae``: VAE weights are at hand, so
    :meth:`Family.load_codec` can build its codec. ``max_frames``: the most latent frames the model takes at once
    (a motion module's positional table; None: any), the loaded expert's ``max_frames``. ``patch``: the latent
    pixels a network token covers along each side (2 for Wan, Qwen-Image and FLUX.1, whose transformers take 2x2
    patches), so pixel sizes must be multiples of ``patch x`` the space's spatial factor. ``facts``: the family's own
    findings (configs read, header shapes, the base's inspection...), passed back to :meth:`Family.load` so nothing
    is read twice. ``schedule``: the loaded expert's noise schedule (:meth:`Family.schedule`), set by the
    registry."""

    family: "Family"
    kind: str
    role: str
    path: Path
    latent_space: LatentSpace
    has_vae: bool
    facts: dict = field(default_factory=dict)
    max_frames: int | None = None
    patch: int = 1
    schedule: NoiseSchedule | None = None

    @property
    def who(self) -> str:
        return who(self.role, self.path)

    @property
    def fps(self) -> float | None:
        """Frames per second of the videos this model makes (its release's, else its family's; None: an image
        model)."""
        return self.facts.get("fps", self.family.fps)

    @property
    def pixel_multiple(self) -> int:
        """The pixel sizes this expert takes are multiples of this: its space's factor times its patch."""
        return self.latent_space.spatial_factor * self.patch

    def describe(self) -> dict:
        return {"family": self.family.name, "kind": self.kind, "path": str(self.path),
                "latent_space": self.latent_space.name, "has_vae": self.has_vae}


@dataclass
class Context:
    """What one ``load_experts`` call shares with every family.

    ``paths``: role -> path of every role in this call (None for an absent role), e.g. for a motion module that
    goes on the spatial expert's model. ``base``: the user's base folder (configs for single files, a model for
    motion modules). ``options``: family options by name (``motion_config``, ``scheduler_overrides``,
    ``decode_chunk_frames``...). ``cache``: components loaded once per call, shared by roles (:meth:`cached`)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    base: Path | None = None
    paths: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    base_used: bool = False   # a family took ``base`` (:meth:`take_base`); given and never taken, it is refused

    def take_base(self) -> Path | None:
        """``base``, for a family that builds an expert on it (marked used)."""
        self.base_used = self.base_used or self.base is not None
        return self.base

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per key in this call (key e.g. ``("unet", resolved path)``)."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def scheduler_config(self, role: str, config: dict, default_override: dict | None = None) -> dict:
        """``config`` with the user's ``scheduler_overrides[role]`` applied, or else the family's
        ``default_override`` (e.g. AnimateDiff's linear betas for a motion module on an SD base)."""
        overrides = self.options.get("scheduler_overrides") or {}
        return {**config, **(overrides[role] if role in overrides else default_override or {})}


#: scheduler class -> the keys :func:`~confiner_core.schedules.from_diffusers_config` reads whose class default differs
#: from its own: a config that leaves one out takes its class's, as diffusers loads it. Data, not an import of
#: diffusers (seconds, where checking a request needs none); the tests hold it against every diffusers scheduler
_SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012}
CLASS_DEFAULTS = {"PNDMScheduler": {"set_alpha_to_one": False},
                  **dict.fromkeys(("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                                   "DPMSolverSDEScheduler"), _SD_BETAS),
                  **dict.fromkeys(("LCMScheduler", "TCDScheduler"), {**_SD_BETAS, "beta_schedule": "scaled_linear"})}


def with_class_defaults(config: dict) -> dict:
    """A scheduler config with the keys it leaves out at its diffusers class's defaults (:data:`CLASS_DEFAULTS`): a
    PNDM config without ``set_alpha_to_one`` ends its last step at alpha_cumprod[0] in diffusers, not at 1."""
    return {**CLASS_DEFAULTS.get(config.get("_class_name"), {}), **config}


class Family(ABC):
    """One model family (SD 1.5, SDXL, AnimateDiff, ModelScope, Wan...): its path kinds, roles and loaders."""

    #: short family name, e.g. ``"sd15"``
    name: str = ""
    #: the family as users call it, e.g. ``"SD 1.5"`` (a role's accepted families, in its refusals)
    label: str = ""
    #: path kind -> one-line description ("a diffusers SD 1.5 pipeline folder"), for messages and README
    kinds: dict[str, str] = {}
    #: the roles its experts can serve (see :meth:`roles_for` for a per-kind choice)
    roles: tuple[str, ...] = ()
    #: frames per second of the videos its models were trained to make (None: image models); an inspection's
    #: ``facts["fps"]`` overrides it for one release. The output video's default rate (:attr:`Inspection.fps`)
    fps: float | None = None
    #: the tensor names that mark this family's network saved alone, in each layout (all of one tuple's names
    #: present), for a family read from folders only: a ComfyUI ``diffusion_models`` file, or a component copied out
    #: of its folder, is refused naming the folder to pass (it read "no model recognised in this file")
    lone_network_names: tuple[tuple[str, ...], ...] = ()

    def roles_for(self, kind: str) -> tuple[str, ...]:
        """The roles an expert of this kind can serve (default: :attr:`roles`)."""
        return self.roles

    @abstractmethod
    def detect(self, path: Path) -> str | None:
        """The kind of ``path`` (a key of :attr:`kinds`) when it belongs to this family, else None. Reads file
        names, configs and headers only; never raises for a path of another family."""

    @abstractmethod
    def inspect(self, path: Path, kind: str, role: str, context: Context) -> Inspection:
        """Check ``path`` (of ``kind``) for ``role`` from configs and headers; raise on any problem."""

    @abstractmethod
    def load(self, inspection: Inspection, context: Context) -> Expert:
        """Load the expert (in ``context.dtype`` on ``context.device``); its ``codec`` is set by the registry."""

    def load_codec(self, inspection: Inspection, context: Context) -> Codec:
        """The expert's VAE as a codec of ``inspection.latent_space`` (only called when ``has_vae``)."""
        raise ValueError(f"{inspection.who}: the {self.name} family has no VAE loader")

    def scheduler_config(self, inspection: Inspection, context: Context) -> dict:
        """The diffusers scheduler config its loaded expert takes: the one it read (its folder's, a single file's
        base's, either filled with its class's defaults as diffusers loads it) with the user's ``scheduler_overrides``
        (flow families set a shift instead: ``facts["shift"]``)."""
        return context.scheduler_config(inspection.role, with_class_defaults(inspection.facts["scheduler"]))

    def schedule(self, inspection: Inspection, context: Context) -> NoiseSchedule:
        """The noise schedule the loaded expert will have, from the inspection alone: what the settings that hang on
        it are settled on before any weights load (T_e's default, 'auto' matching, the checks of T_e and the steps).
        A command line that read the scheduler configs itself settled a Wan folder without one on the spatial
        expert's SD table (a trial: same_index matching where the loaded experts gave nearest)."""
        shift = inspection.facts.get("shift")
        if shift is not None:
            return flow_schedule(shift, name=f"{inspection.role} ({self.name} flow shift {shift:g})")
        try:
            return from_diffusers_config(self.scheduler_config(inspection, context),
                                         name=f"{inspection.role} ({self.name})")
        except NotImplementedError as e:   # (load_experts promises a ValueError for an unusable expert)
            raise ValueError(f"{inspection.who}: {e}; use another checkpoint for the {inspection.role} expert") \
                from None
        except ValueError as e:   # a value the user's overrides put there is named as theirs
            if inspection.role in (context.options.get("scheduler_overrides") or {}):
                raise ValueError(f"scheduler_overrides[{inspection.role!r}]: {e}") from None
            raise


class ImagePipelineFamily(Family):
    """A family of text-to-image transformer pipeline folders (Qwen-Image, FLUX.1): an image model, so the spatial
    expert only. Detection is data: ``pipelines``, the model_index.json classes of its usable folders;
    ``transformer_class``, transformer/config.json's for a folder without model_index.json; ``folder_kind`` and
    ``other_kind``, the kinds of a usable folder and of another pipeline of the same name stem (an edit or control
    model, refused by name)."""

    roles = ("spatial",)
    pipelines: tuple[str, ...] = ()
    transformer_class: str = ""
    folder_kind: str = ""
    other_kind: str = ""

    def roles_for(self, kind: str) -> tuple[str, ...]:
        return self.roles if kind == self.folder_kind else ()

    def detect(self, path: Path) -> str | None:
        return pipeline_kind(path, self.pipelines, self.transformer_class, self.folder_kind, self.other_kind)
