"""Build a SAM2-family video predictor from any config + checkpoint, with errors that name the fix.

A model with SAM2's predictor API (SAM2 / SAM2.1 of any size, EfficientTAM, ...) is one
`Sam2Family` entry in FAMILIES: its package (holding `configs/`), builder "module:function"
(called like sam2.build_sam.build_sam2_video_predictor), image predictor class, how short
names map to configs, and its distribution names. The backend (sam2_backend.Sam2Backend,
option `family`) uses nothing else of the package.

Config forms accepted (resolve_config):
- None: inferred from the checkpoint file name (sam2.1_hiera_tiny.pt -> sam2.1_hiera_t);
- a short name: "sam2.1_hiera_t", "sam2.1_hiera_large", "sam2_hiera_b+";
- a config inside the family's package: "configs/sam2.1/sam2.1_hiera_l.yaml";
- a path to your own YAML file (same schema as the family's configs).

Usage:
    model, name = build_video_predictor(None, "ckpt/sam2.1_hiera_large.pt", device="cuda")
    FAMILIES["mytam"] = Sam2Family("mytam", "mytam", "mytam.build:build_video_predictor", ...)
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources

log = logging.getLogger(__name__)

SIZE_ALIASES = {"tiny": "t", "small": "s", "base_plus": "b+", "base+": "b+", "large": "l"}
_NAME_RE = re.compile(
    r"(sam2(?:\.1)?)_hiera_(tiny|small|base_plus|base\+|large|t|s|b\+|l)(?![\w+])"
)


def short_config_name(text: str) -> str | None:
    """'.../sam2.1_hiera_tiny.pt' or 'sam2.1_hiera_t' -> 'configs/sam2.1/sam2.1_hiera_t.yaml'."""
    m = _NAME_RE.search(os.path.basename(text))
    if m is None:
        return None
    family, size = m.group(1), SIZE_ALIASES.get(m.group(2), m.group(2))
    return f"configs/{family}/{family}_hiera_{size}.yaml"


_TAM_RE = re.compile(r"(efficienttam)_(ti|s)(_512x512)?(?![\w+])")


def short_tam_config_name(text: str) -> str | None:
    """'efficienttam_s.pt' -> 'configs/efficienttam/efficienttam_s.yaml' (EfficientTAM)."""
    m = _TAM_RE.search(os.path.basename(text))
    if m is None:
        return None
    return f"configs/efficienttam/{m.group(1)}_{m.group(2)}{m.group(3) or ''}.yaml"


@dataclass(frozen=True)
class Sam2Family:
    """One model family with SAM2's video/image predictor API."""

    name: str  # the `family` option value
    package: str  # import name; its configs/ folder holds the hydra configs
    builder: str  # "module:function" building the video predictor (sam2's signature)
    image_predictor: str  # "module:Class" taking (model, mask_threshold=...)
    config_dirs: tuple[str, ...]  # folders under configs/ listed in error messages
    short_config: Callable[[str], str | None]  # checkpoint/short name -> config, or None
    dists: tuple[str, ...] = ()  # distribution names, for info()'s version
    requirements: str = "services/sam/requirements-sam2.txt"  # what to install

    def load(self, spec: str):
        module, attr = spec.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as e:
            raise RuntimeError(
                f"family: {self.name} needs {module} ({e}); install it (see {self.requirements})"
            ) from e


FAMILIES: dict[str, Sam2Family] = {
    "sam2": Sam2Family(
        "sam2",
        "sam2",
        "sam2.build_sam:build_sam2_video_predictor",
        "sam2.sam2_image_predictor:SAM2ImagePredictor",
        ("sam2", "sam2.1"),
        short_config_name,
        ("sam2", "SAM-2"),
    ),
    # EfficientTAM (yformer/EfficientTAM): SAM2's predictor API with efficient backbones.
    # Not installable here (no wheel in reach) and never run by this repo's tests.
    "efficienttam": Sam2Family(
        "efficienttam",
        "efficient_track_anything",
        "efficient_track_anything.build_efficienttam:build_efficienttam_video_predictor",
        "efficient_track_anything.efficienttam_image_predictor:EfficientTAMImagePredictor",
        ("efficienttam",),
        short_tam_config_name,
        ("efficient_track_anything",),
        "the EfficientTAM repository's install notes (pip install -e .)",
    ),
}


def family(name: str) -> Sam2Family:
    if name not in FAMILIES:
        raise ValueError(f"family: unknown {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def package_configs(fam: Sam2Family | None = None) -> list[str]:
    """Config names shipped inside the family's installed package (for error messages)."""
    fam = fam or FAMILIES["sam2"]
    root = resources.files(fam.package) / "configs"
    out = []
    for sub in fam.config_dirs:
        d = root / sub
        if d.is_dir():
            out += sorted(
                f"configs/{sub}/{p.name}" for p in d.iterdir() if p.name.endswith(".yaml")
            )
    return out


def resolve_config(
    config: str | None, checkpoint: str | None, fam: Sam2Family | None = None
) -> tuple[str, str | None]:
    """Returns (hydra config name, absolute config dir or None for sam2's own configs)."""
    fam = fam or FAMILIES["sam2"]
    if config is None:
        guess = fam.short_config(checkpoint or "")
        if guess is None:
            raise ValueError(
                f"config: cannot infer the model config from checkpoint {checkpoint!r}; set "
                "option config (e.g. sam2.1_hiera_l or configs/sam2.1/sam2.1_hiera_l.yaml)"
            )
        config = guess
    if config.endswith((".yaml", ".yml")) and os.path.isfile(config):
        path = os.path.abspath(config)
        return os.path.basename(path), os.path.dirname(path)
    name = config if "/" in config else fam.short_config(config)
    if name is None or not (resources.files(fam.package) / name).is_file():
        raise ValueError(
            f"config: {config!r} is neither a YAML file nor a {fam.name} config; use one of "
            f"{package_configs(fam)} or a path to your own YAML"
        )
    return name, None


def build_video_predictor(
    config: str | None,
    checkpoint: str,
    device: str,
    vos_optimized: bool = False,
    hydra_overrides: list[str] | None = None,
    apply_postprocessing: bool = True,
    fam: Sam2Family | None = None,
):
    """The family's video predictor in eval mode on `device`, weights from `checkpoint`;
    returns (model, config name)."""
    fam = fam or FAMILIES["sam2"]
    build = fam.load(fam.builder)

    if not checkpoint or not os.path.isfile(checkpoint):
        raise ValueError(
            f"checkpoint: file {checkpoint!r} not found; download one (e.g. "
            "sam2.1_hiera_large.pt from SAM2's checkpoints/download_ckpts.sh) and set the path"
        )
    name, cfg_dir = resolve_config(config, checkpoint, fam)
    kwargs = dict(
        config_file=name,
        ckpt_path=checkpoint,
        device=device,
        mode="eval",
        hydra_overrides_extra=list(hydra_overrides or []),
        apply_postprocessing=apply_postprocessing,
    )
    if vos_optimized:  # only sam2 >= 1.1 builders know it; others get no unknown argument
        kwargs["vos_optimized"] = True
    try:
        if cfg_dir is None:
            model = build(**kwargs)
        else:  # a user YAML: search its folder instead of the package's (restored on exit)
            with _config_dir(cfg_dir):
                model = build(**kwargs)
    except RuntimeError as e:  # sam2 raises a bare RuntimeError on missing/unexpected keys
        raise ValueError(
            f"checkpoint: {checkpoint} does not fit config {name} ({e or 'state dict keys differ'}"
            "; the missing/unexpected keys are logged above); set option config to the model "
            "the checkpoint was trained with"
        ) from e
    log.info("%s: built %s from %s on %s", fam.name, name, checkpoint, device)
    return model, name


@contextlib.contextmanager
def _config_dir(path: str) -> Iterator[None]:
    """Point hydra at `path` for one build, then give sam2 its own config module back."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()  # sam2/__init__ initialised hydra with its package configs
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=path, version_base="1.2"):
            yield
    finally:
        restore_gh_from_backup(backup)
