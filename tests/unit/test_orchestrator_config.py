"""Pipeline config parsing: defaults, unknown keys, types, cross-field rules, the shipped YAMLs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from orchestrator.config import (
    ArmOnlyConfig,
    PipelineConfig,
    PipelineConfigError,
    PromptConfig,
    RunConfig,
    as_pipeline,
    load_pipeline,
    parse_pipeline,
)

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = sorted((ROOT / "configs" / "pipelines").glob("*.yaml"))


def test_defaults_rgbm():
    cfg = parse_pipeline({"pipeline": "rgbm"})
    assert cfg.prompt == PromptConfig()
    assert cfg.direction == "auto"  # backward from a last-frame prompt, else both
    assert cfg.effective_outputs == ("rgbm",)
    assert cfg.run.episode_retries == 2


@pytest.mark.parametrize(
    "raw, where",
    [
        ({"pipeline": "rgbn"}, "pipeline"),
        ({}, "pipeline"),
        ({"pipeline": "rgbm", "promt": {}}, "promt"),
        ({"pipeline": "rgbm", "prompt": {"sorce": "vlm"}}, "prompt.sorce"),
        ({"pipeline": "rgbm", "prompt": {"source": "sam"}}, "prompt.source"),
        ({"pipeline": "rgbm", "prompt": {"frame": "0"}}, "prompt.frame"),
        ({"pipeline": "rgbm", "prompt": {"frame": "first"}}, "prompt.frame"),  # -1 / last / grasp are valid
        ({"pipeline": "rgbm", "prompt": {"frame": True}}, "prompt.frame"),
        ({"pipeline": "rgbm", "prompt": {"grasp": {"closing": "down"}}}, "prompt.grasp.closing"),
        ({"pipeline": "rgbm", "prompt": {"source": "file"}}, "prompts_file"),
        ({"pipeline": "rgbm", "prompt": {"source": "text"}}, "prompt.text"),
        ({"pipeline": "rgbm", "prompt": {"text": "mug"}}, "prompt.text"),
        ({"pipeline": "rgbm", "direction": "sideways"}, "direction"),
        ({"pipeline": "rgbm", "outputs": ["rgbm", "gif"]}, "outputs"),
        ({"pipeline": "rgbm", "run": {"episode_retries": -1}}, "run.episode_retries"),
        ({"pipeline": "rgbm", "run": {"prefetch_episodes": 0}}, "run.prefetch_episodes"),
        ({"pipeline": "rgbm", "run": {"fail_fast": 1}}, "run.fail_fast"),
        ({"pipeline": "rgbm", "run": {"backoff_s": True}}, "run.backoff_s"),
        ({"pipeline": "rgbm", "arm_only": {}}, "arm_only"),
        ({"pipeline": "arm_only"}, "prompts_file"),
        ({"pipeline": "arm_only", "prompts_file": "p.yaml", "prompt": {}}, "prompt"),
        ({"pipeline": "arm_only", "prompts_file": "p.yaml", "arm_only": {"objects": {}}}, "arm_only.objects"),
        ({"pipeline": "arm_only", "prompts_file": "p", "arm_only": {"bootstrap_text": {"gripper_left": "g"}}},
         "arm_only.bootstrap_text.gripper_left"),
        ({"pipeline": "arm_only", "prompts_file": "p", "arm_only": {"obj_ids": {"arm_left": 3}}}, "arm_only.obj_ids"),
        ({"pipeline": "arm_only", "prompts_file": "p", "arm_only": {"obj_ids": {"arm_middle": 7}}},
         "arm_only.obj_ids.arm_middle"),
        ({"pipeline": "arm_only", "prompts_file": "p", "export_options": {"dilation_radius": 3}},
         "export_options.dilation_radius"),
    ],
)  # fmt: skip
def test_errors_name_the_field(raw, where):
    with pytest.raises(PipelineConfigError) as e:
        parse_pipeline(raw, source="cfg.yaml")
    assert f"{where}:" in str(e.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(
        PipelineConfigError,
        match=r"run.prefetch: unknown field; valid fields are \[.*'prefetch_episodes'",
    ):
        parse_pipeline({"pipeline": "rgbm", "run": {"prefetch": 3}})


def test_arm_only_dilation_goes_to_exporter():
    cfg = parse_pipeline(
        {"pipeline": "arm_only", "prompts_file": "p.yaml", "arm_only": {"dilation_radius": 4},
         "export_options": {"compressor": "zstd"}}
    )  # fmt: skip
    assert cfg.effective_export_options() == {"compressor": "zstd", "dilation_radius": 4}
    assert cfg.effective_outputs == ("arm_only",)


def test_round_trip_and_overrides(tmp_path):
    cfg = parse_pipeline({"pipeline": "rgbm", "prompt": {"source": "vlm", "frame": 3}})
    again = parse_pipeline(cfg.to_dict())
    assert dataclasses.replace(again, origin=cfg.origin) == cfg
    over = as_pipeline(cfg, {"run": {"fail_fast": True}, "prompt": {"frame": 4}})
    assert over.run.fail_fast and over.prompt.frame == 4 and over.prompt.source == "vlm"
    # with the vlm source a prompts file is read for its per-episode `frame:` overrides only;
    # one carrying target boxes is refused when it is read (test_prompts_use_* below)
    assert as_pipeline(cfg, {"prompts_file": "x.yaml"}).prompts_file == "x.yaml"
    # an override can make a config valid: source file needs a prompts file
    p = tmp_path / "c.yaml"
    p.write_text("pipeline: rgbm\nprompt: {source: file}\n")
    with pytest.raises(PipelineConfigError, match="prompts_file"):
        load_pipeline(p)
    assert load_pipeline(p, {"prompts_file": "q.yaml"}).prompts_file == "q.yaml"


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(PipelineConfigError, match="does not exist"):
        load_pipeline(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: [rgbm\n")
    with pytest.raises(PipelineConfigError, match="not valid YAML"):
        load_pipeline(bad)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_validate(path):
    cfg = load_pipeline(path)
    assert cfg.pipeline in ("rgbm", "arm_only")


def _keys(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {"origin"}


def test_every_option_is_documented_in_the_shipped_configs():
    """rgbm.yaml lists every top-level, prompt and run key; arm_only.yaml every arm_only key."""
    rgbm = yaml.safe_load((ROOT / "configs/pipelines/rgbm.yaml").read_text())
    arm = yaml.safe_load((ROOT / "configs/pipelines/arm_only.yaml").read_text())
    assert _keys(PipelineConfig) - {"arm_only"} <= set(rgbm)
    assert _keys(PromptConfig) == set(rgbm["prompt"])
    assert _keys(RunConfig) == set(rgbm["run"])
    assert _keys(ArmOnlyConfig) == set(arm["arm_only"])
    # and the documented values are the defaults
    assert parse_pipeline(rgbm).prompt == PromptConfig()
    assert parse_pipeline(rgbm).run == RunConfig()


def _pf(entry):
    from protocol.prompts_file import parse_prompts

    return parse_prompts({"version": 1, "coords": "abs", "episodes": {0: entry}}, "p.yaml")


def test_prompts_use_vlm_source_takes_frame_overrides_only():
    from orchestrator.run import RunError, check_prompts_use

    vlm = parse_pipeline({"pipeline": "rgbm", "prompt": {"source": "vlm", "frame": "grasp"}})
    check_prompts_use(vlm, _pf({"frame": "last"}))  # an override: read and used
    boxed = _pf({"target": {"frame": 0, "box": [1, 2, 30, 40]}})
    with pytest.raises(RunError, match=r"p.yaml: episodes.0.target would not be read"):
        check_prompts_use(vlm, boxed)  # boxes the vlm source would silently ignore
    text = parse_pipeline({"pipeline": "rgbm", "prompt": {"source": "text", "text": "mug"}})
    with pytest.raises(RunError, match="prompt.source: file"):
        check_prompts_use(text, boxed)
    filecfg = parse_pipeline(
        {"pipeline": "rgbm", "prompt": {"source": "file"}, "prompts_file": "p.yaml"}
    )
    check_prompts_use(filecfg, boxed)  # the file source reads the boxes
