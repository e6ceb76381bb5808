"""Metric values on the history page: written exactly as Django's ``floatformat:4`` writes them."""

from __future__ import annotations

import math

from django.template.defaultfilters import floatformat
from hypothesis import given
from hypothesis import strategies as st

from dashboard.templatetags.dashboard import four_places


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**30, max_value=10**30)))
def test_four_places_writes_what_floatformat_writes(value):
    assert four_places(value) == floatformat(value, 4)


def test_four_places_rounds_the_shown_decimal_half_up_and_drops_negative_zero():
    assert four_places(0.00015) == "0.0002"  # binary 0.000149999…, shown as 0.00015
    assert four_places(-0.00001) == "0.0000"
    assert four_places(1e20) == "100000000000000000000.0000"
    assert four_places(math.inf) == "inf"


def test_values_that_are_not_numbers_are_left_to_the_filter():
    for value in ("0.25", True, None, [1]):
        assert four_places(value) == floatformat(value, 4)
