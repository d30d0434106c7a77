"""The shared argument checks: what they accept, and that a refusal names the value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repgeo_utils import validate


def test_integers_accept_numpy_ints_and_refuse_floats_and_bools():
    assert (
        validate.positive_int("epochs", np.int64(3)) == 3
        and type(validate.positive_int("e", 3)) is int
    )
    with pytest.raises(TypeError, match="epochs must be an int, got float 3"):
        validate.positive_int("epochs", 3.0)
    with pytest.raises(TypeError, match="epochs must be an int, got bool True"):
        validate.positive_int("epochs", True)
    with pytest.raises(ValueError, match="epochs must be an int >= 1, got 0"):
        validate.positive_int("epochs", 0)
    with pytest.raises(ValueError, match="k must be an int <= 4, got 5"):
        validate.integer("k", 5, minimum=1, maximum=4)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_reals_refuse_nan_and_infinities(bad):
    with pytest.raises(ValueError, match=f"lr must be a finite number > 0, got {bad:g}"):
        validate.positive_float("lr", bad)


def test_real_bounds_and_fractions():
    assert validate.non_negative_float("decay", 0) == 0.0
    with pytest.raises(ValueError, match=r"decay must be a finite number >= 0, got -0.1"):
        validate.non_negative_float("decay", -0.1)
    assert validate.fraction("p", 1.0) == 1.0
    with pytest.raises(ValueError, match=r"p must be a finite number >= 0 and < 1, got 1"):
        validate.fraction("p", 1.0, open_high=True)
    with pytest.raises(TypeError, match="lr must be a number, got str '1e-3'"):
        validate.positive_float("lr", "1e-3")


def test_one_of_lists_the_choices():
    assert validate.one_of("mode", "keep", ("keep", "remove")) == "keep"
    with pytest.raises(ValueError, match="mode must be one of 'keep', 'remove'; got 'kept'"):
        validate.one_of("mode", "kept", ("keep", "remove"))


def test_text_list_refuses_a_single_string_and_non_strings():
    assert validate.text_list("texts", ("a", "b")) == ["a", "b"]
    with pytest.raises(
        TypeError, match=r"texts must be a list of texts, got a single str \('hello'\)"
    ):
        validate.text_list("texts", "hello")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int 3"):
        validate.text_list("texts", ["a", 3])
    with pytest.raises(ValueError, match="texts is empty"):
        validate.text_list("texts", [])
    assert validate.text_list("texts", [], allow_empty=True) == []


def test_pair():
    assert validate.pair("fit_range", (12, 100)) == (12, 100)
    with pytest.raises(ValueError, match=r"fit_range must be a pair of two values, got \(12,\)"):
        validate.pair("fit_range", (12,))


def test_one_of_suggests_the_closest_name_and_survives_unhashable_values():
    with pytest.raises(ValueError, match=r"got 'adamw' \(did you mean 'adamw_torch'\?\)"):
        validate.one_of("optimizer", "adamw", ("adamw_torch", "sgd"))
    with pytest.raises(ValueError, match=r"got \['keep'\]"):
        validate.one_of("mode", ["keep"], {"keep", "remove"})


def test_text_list_can_refuse_repeats():
    assert validate.text_list("names", ["a", "b"], unique=True) == ["a", "b"]
    with pytest.raises(ValueError, match=r"names must not repeat a text; \['a'\] appear"):
        validate.text_list("names", ["a", "b", "a"], unique=True)


def test_boolean():
    assert validate.boolean("flag", np.bool_(True)) is True
    with pytest.raises(TypeError, match="flag must be True or False, got str 'no'"):
        validate.boolean("flag", "no")
    with pytest.raises(TypeError, match="got int 1"):
        validate.boolean("flag", 1)


def test_finite_array_names_the_kind_and_the_first_place():
    x = np.zeros((3, 2))
    assert validate.finite_array("x", x) is x
    x[2, 1], x[1, 0] = math.inf, math.nan
    with pytest.raises(
        ValueError,
        match=r"x contains NaN or infinite values \(1 NaN, 1 infinite; the first at row 1, column 0",
    ):
        validate.finite_array("x", x)
    with pytest.raises(ValueError, match="the first at row 11, column 0"):
        validate.finite_array("x", x, row_offset=10)
    with pytest.raises(ValueError, match=r"\(1 NaN; the first at index 2"):
        validate.finite_array("v", [1.0, 2.0, math.nan])
    with pytest.raises(TypeError, match="v must hold numbers"):
        validate.finite_array("v", ["a"])


def test_torch_device():
    assert str(validate.torch_device("device", "cpu")) == "cpu"
    with pytest.raises(
        ValueError, match="device must be a torch device such as 'cpu' or 'cuda', got 'tpu'"
    ):
        validate.torch_device("device", "tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' is not available here; use 'cpu'"):
            validate.torch_device("device", "cuda")
