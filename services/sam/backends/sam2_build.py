"""Build a SAM2 video predictor from any config + checkpoint, with errors that name the fix.

Config forms accepted (resolve_config):
- None: inferred from the checkpoint file name (sam2.1_hiera_tiny.pt -> sam2.1_hiera_t);
- a short name: "sam2.1_hiera_t", "sam2.1_hiera_large", "sam2_hiera_b+";
- a config inside the sam2 package: "configs/sam2.1/sam2.1_hiera_l.yaml";
- a path to your own YAML file (same schema as SAM2's configs).

Usage:
    model = build_video_predictor(None, "ckpt/sam2.1_hiera_large.pt", device="cuda")
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
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


def package_configs() -> list[str]:
    """Config names shipped inside the installed sam2 package (for error messages)."""
    root = resources.files("sam2") / "configs"
    out = []
    for family in ("sam2", "sam2.1"):
        d = root / family
        if d.is_dir():
            out += sorted(
                f"configs/{family}/{p.name}" for p in d.iterdir() if p.name.endswith(".yaml")
            )
    return out


def resolve_config(config: str | None, checkpoint: str | None) -> tuple[str, str | None]:
    """Returns (hydra config name, absolute config dir or None for sam2's own configs)."""
    if config is None:
        guess = short_config_name(checkpoint or "")
        if guess is None:
            raise ValueError(
                f"config: cannot infer the model config from checkpoint {checkpoint!r}; set "
                "option config (e.g. sam2.1_hiera_l or configs/sam2.1/sam2.1_hiera_l.yaml)"
            )
        config = guess
    if config.endswith((".yaml", ".yml")) and os.path.isfile(config):
        path = os.path.abspath(config)
        return os.path.basename(path), os.path.dirname(path)
    name = config if "/" in config else short_config_name(config)
    if name is None or not (resources.files("sam2") / name).is_file():
        raise ValueError(
            f"config: {config!r} is neither a YAML file nor a sam2 config; use one of "
            f"{package_configs()} or a path to your own YAML"
        )
    return name, None


def build_video_predictor(
    config: str | None,
    checkpoint: str,
    device: str,
    vos_optimized: bool = False,
    hydra_overrides: list[str] | None = None,
    apply_postprocessing: bool = True,
):
    """A SAM2VideoPredictor in eval mode on `device`, weights from `checkpoint`."""
    from sam2.build_sam import build_sam2_video_predictor

    if not checkpoint or not os.path.isfile(checkpoint):
        raise ValueError(
            f"checkpoint: file {checkpoint!r} not found; download one (e.g. "
            "sam2.1_hiera_large.pt from SAM2's checkpoints/download_ckpts.sh) and set the path"
        )
    name, cfg_dir = resolve_config(config, checkpoint)
    kwargs = dict(
        config_file=name,
        ckpt_path=checkpoint,
        device=device,
        mode="eval",
        hydra_overrides_extra=list(hydra_overrides or []),
        apply_postprocessing=apply_postprocessing,
        vos_optimized=vos_optimized,
    )
    try:
        if cfg_dir is None:
            model = build_sam2_video_predictor(**kwargs)
        else:  # a user YAML: search its folder instead of sam2's (restored on exit)
            with _config_dir(cfg_dir):
                model = build_sam2_video_predictor(**kwargs)
    except RuntimeError as e:  # sam2 raises a bare RuntimeError on missing/unexpected keys
        raise ValueError(
            f"checkpoint: {checkpoint} does not fit config {name} ({e or 'state dict keys differ'}"
            "; the missing/unexpected keys are logged above); set option config to the model "
            "the checkpoint was trained with"
        ) from e
    log.info("sam2: built %s from %s on %s", name, checkpoint, device)
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
