"""One rule for option values across services (protocol/options.py): the value "no" means the
same thing everywhere (unquoted YAML no = false; the string "no" is refused naming the field)."""

from __future__ import annotations

import pytest

from protocol.runner import _parse_option
from services.reader.reader import ReaderConfig
from services.sam.backends import create_backend
from services.vlm.backends import make_backend
from services.vlm.errors import OptionError


def test_unquoted_no_on_the_command_line_is_false_for_every_service():
    key, value = _parse_option("non_overlap=no")  # --option VALUE is read as YAML
    assert (key, value) == ("non_overlap", False)
    assert create_backend("classical", {"non_overlap": value}).non_overlap is False
    assert make_backend("openai", {"pre_resize": value}).opts.pre_resize is False
    assert ReaderConfig.from_options({"prefetch": value}).prefetch is False


@pytest.mark.parametrize("word", ["no", "false", "0", "yes"])
def test_a_string_for_a_boolean_is_refused_everywhere_naming_the_field(word):
    with pytest.raises(ValueError, match=rf"non_overlap: expected bool, got str '{word}'"):
        create_backend("classical", {"non_overlap": word})
    with pytest.raises(OptionError, match=rf"pre_resize: expected bool, got str '{word}'"):
        make_backend("openai", {"pre_resize": word})
    with pytest.raises(ValueError, match=rf"prefetch: expected bool, got str '{word}'"):
        ReaderConfig.from_options({"prefetch": word})


def test_numbers_are_numbers_and_booleans_are_not():
    assert create_backend("classical", {"flow_scale": 1}).flow_scale == 1.0  # int for a float
    with pytest.raises(ValueError, match="flow_scale: expected float, got bool"):
        create_backend("classical", {"flow_scale": True})
    with pytest.raises(ValueError, match=r"grow: expected int, got str '3'"):
        create_backend("classical", {"grow": "3"})
    with pytest.raises(OptionError, match="concurrency: expected int, got float"):
        make_backend("openai", {"concurrency": 2.5})
