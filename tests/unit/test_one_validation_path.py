"""One validation path (issue 13): the same bad inputs are refused the same way by a wire
message, a sam and a vlm backend option, the service options, services.yaml, a pipeline YAML,
the exporter options and the reader config, since every one parses through protocol/schema.py.

Usage: pytest tests/unit/test_one_validation_path.py
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from orchestrator.config import PipelineConfigError, parse_pipeline
from protocol.config import ConfigError, parse_services
from protocol.errors import BadRequest
from protocol.schema import RULES
from services.exporter.errors import ExportError
from services.exporter.options import ExportOptions
from services.exporter.service import build_service as build_exporter
from services.reader.reader import ReaderConfig
from services.reader.service import build_service as build_reader
from services.sam.api import CONTRACT as SAM
from services.sam.backends import create_backend
from services.sam.service import build_service as build_sam
from services.studio.options import StudioOptions
from services.vlm.backends import make_backend
from services.vlm.errors import OptionError

ENDPOINT = {"endpoints": ["tcp://127.0.0.1:1"], "backend": "x"}
STUDIO = {"buffer": "b", "pipeline": "p", "output": "o"}
TEXT = {"source": "text", "text": "mug"}


@dataclass(frozen=True)
class Target:
    """Where a value goes: `feed(key, value)` puts `value` under the boolean or int key."""

    name: str
    feed: Callable[[str, object], object]  # (key, value) -> parsed object, or raises
    bool_key: str | None  # a boolean field
    int_key: str  # an int field
    prefix: str  # how the error names the field: PREFIX + key
    errors: tuple[type[Exception], ...]
    unknown_prefix: str | None = None  # where an unknown key is named, if not PREFIX


def _pipeline(section: str) -> Callable[[str, object], object]:
    return lambda k, v: parse_pipeline({"pipeline": "rgbm", "prompt": TEXT, section: {k: v}})


def _reader_service(k, v):
    return build_reader("zarr", {k: v})


TARGETS = [
    Target(
        "wire message",
        lambda k, v: SAM.request("add_prompt", **{"session": "s", "frame": 0, "obj_id": 1, k: v}),
        "rel",
        "frame",
        "sam.add_prompt.",
        (BadRequest,),
    ),  # fmt: skip
    Target(
        "wire message (server side)",
        lambda k, v: SAM.decode("add_prompt", {"session": "s", "frame": 0, "obj_id": 1, k: v}),
        "rel",
        "frame",
        "",
        (BadRequest,),
    ),  # fmt: skip
    Target(
        "sam backend option",
        lambda k, v: create_backend("classical", {k: v}),
        "non_overlap",
        "grow",
        "backend classical options.",
        (ValueError,),
    ),  # fmt: skip
    Target(
        "sam backend nested option",
        lambda k, v: create_backend("classical", {"track": {k: v}}),
        "lines",
        "band",
        "backend classical options.track.",
        (ValueError,),
    ),  # fmt: skip
    Target(
        "vlm backend option",
        lambda k, v: make_backend("openai", {k: v}),
        "pre_resize",
        "concurrency",
        "openai backend options.",
        (OptionError,),
    ),  # fmt: skip
    Target(
        "sam service option",
        lambda k, v: build_sam("classical", {k: v}),
        None,
        "max_sessions",
        "sam options.",
        (ValueError,),
        unknown_prefix="backend classical options.",
    ),  # the backend gets the other keys
    Target(
        "services.yaml",
        lambda k, v: parse_services({"services": {"sam": {**ENDPOINT, k: v}}}),
        "insecure",
        "workers",
        "services.sam.",
        (ConfigError,),
    ),  # fmt: skip
    Target(
        "pipeline YAML",
        _pipeline("run"),
        "fail_fast",
        "prefetch_episodes",
        "run.",
        (PipelineConfigError,),
    ),
    Target(
        "exporter options",
        lambda k, v: ExportOptions.from_dict({k: v}),
        "fsync",
        "dilation_radius",
        "options.",
        (ExportError,),
    ),  # fmt: skip
    Target(
        "exporter service option",
        lambda k, v: build_exporter("local", {k: v}),
        None,
        "workers",
        "exporter options.",
        (ValueError,),
    ),  # fmt: skip
    Target(
        "reader config",
        lambda k, v: ReaderConfig.from_options({k: v}),
        "prefetch",
        "threads",
        "reader options.",
        (ValueError,),
    ),  # fmt: skip
    Target(
        "reader service option", _reader_service, None, "workers", "reader options.", (ValueError,)
    ),
    Target(
        "studio options",
        lambda k, v: StudioOptions.from_options({**STUDIO, k: v}),
        "open_registration",
        "jpeg_quality",
        "studio options.",
        (ValueError,),
    ),  # fmt: skip
]
IDS = [t.name for t in TARGETS]


def _message(t: Target, key: str, value: object) -> str:
    with pytest.raises(t.errors) as e:
        t.feed(key, value)
    return getattr(e.value, "message", None) or str(e.value)


@pytest.mark.parametrize("t", TARGETS, ids=IDS)
@pytest.mark.parametrize("word", ["no", "false", "yes"])
def test_a_string_for_a_boolean_is_refused_with_one_wording(t, word):
    if t.bool_key is None:
        pytest.skip(f"{t.name} has no boolean field")
    msg = _message(t, t.bool_key, word)
    assert f"{t.prefix}{t.bool_key}: expected bool, got str '{word}'; {RULES[bool]}" in msg, msg


@pytest.mark.parametrize("t", TARGETS, ids=IDS)
@pytest.mark.parametrize(
    "value, shown", [("3", "str '3'"), (True, "bool True"), (1.5, "float 1.5")], ids=["str", "bool", "float"]
)  # fmt: skip
def test_an_int_is_a_whole_number_never_a_string_bool_or_fraction(t, value, shown):
    msg = _message(t, t.int_key, value)
    assert f"{t.prefix}{t.int_key}: expected int, got {shown}; {RULES[int]}" in msg, msg


@pytest.mark.parametrize("t", TARGETS, ids=IDS)
def test_a_number_for_a_boolean_is_refused(t):
    if t.bool_key is None:
        pytest.skip(f"{t.name} has no boolean field")
    msg = _message(t, t.bool_key, 1)
    assert f"{t.prefix}{t.bool_key}: expected bool, got int 1; {RULES[bool]}" in msg, msg


@pytest.mark.parametrize("t", TARGETS, ids=IDS)
def test_an_unknown_key_is_refused_naming_the_valid_ones(t):
    msg = _message(t, "colour", 1)
    assert f"{t.unknown_prefix or t.prefix}colour: unknown field; valid fields are [" in msg, msg
    assert repr(t.int_key) in msg, msg  # the list holds the real keys


@pytest.mark.parametrize(
    "feed, errors, path, valid",
    [
        (lambda: parse_services({"services": {"sam": {**ENDPOINT, "curve": {"public_key": "k",
                                                                            "secrt": "s"}}}}),
         ConfigError, "services.sam.curve.secrt", "secret_key"),
        (lambda: parse_pipeline({"pipeline": "rgbm", "prompt": {**TEXT, "grasp": {"hol": 3}}}),
         PipelineConfigError, "prompt.grasp.hol", "hold"),
        (lambda: parse_pipeline({"pipeline": "rgbm", "prompt": TEXT, "run": {"fail": True}}),
         PipelineConfigError, "run.fail", "fail_fast"),
    ],
    ids=["services.yaml curve", "pipeline prompt.grasp", "pipeline run"],
)  # fmt: skip
def test_a_nested_unknown_key_names_its_whole_path(feed, errors, path, valid):
    with pytest.raises(errors) as e:
        feed()
    assert f"{path}: unknown field; valid fields are [" in str(e.value)
    assert repr(valid) in str(e.value)


@pytest.mark.parametrize(
    "feed, path",
    [
        (lambda v: parse_services({"services": {"sam": {**ENDPOINT, "curve": {"public_key": v}}}}),
         "services.sam.curve.public_key"),
        (lambda v: parse_pipeline({"pipeline": "rgbm", "prompt": {**TEXT, "grasp": {"hold": v}}}),
         "prompt.grasp.hold"),
    ],
    ids=["services.yaml curve", "pipeline prompt.grasp"],
)  # fmt: skip
def test_a_nested_bad_type_names_its_whole_path(feed, path):
    with pytest.raises((ConfigError, PipelineConfigError)) as e:
        feed(True)
    assert f"{path}: expected " in str(e.value) and "got bool True" in str(e.value)


def test_good_values_pass_everywhere_and_ints_are_accepted_as_floats():
    assert SAM.request("add_prompt", session="s", frame=2, obj_id=1, rel=True)["rel"] is True
    assert create_backend("classical", {"non_overlap": False, "grow": 2}).non_overlap is False
    assert make_backend("openai", {"pre_resize": False, "timeout": 3}).opts.timeout == 3.0
    cfg = parse_services({"services": {"sam": {**ENDPOINT, "workers": 2, "timeout_s": 5}}})
    assert cfg.services["sam"].workers == 2 and cfg.services["sam"].timeout_s == 5.0
    run = parse_pipeline({"pipeline": "rgbm", "prompt": TEXT, "run": {"backoff_s": 1}}).run
    assert run.backoff_s == 1.0 and isinstance(run.backoff_s, float)
    assert ExportOptions.from_dict({"fsync": False, "preview_fps": 5}).preview_fps == 5.0
    assert ReaderConfig.from_options({"prefetch": False, "roots": "/data"}).roots == ("/data",)
