"""The calibration cost prediction against what was measured on a GPU (facts recorded in calibration.MEASURED)."""

from __future__ import annotations

import json

import pytest

from generator.engine.calibration import GIB, MEASURED, calibration_estimate
from generator.engine.gpus import lookup_gpu
from generator.engine.memory import memory_plan
from generator.engine.shape import model_shape
from generator.resources import data_dir
from generator.spec import with_overrides, load_spec


def _estimate(gpu: str, *overrides: str):
    spec = with_overrides(load_spec(None), [f"build.gpu={gpu}", *overrides])
    shape = model_shape(json.loads((data_dir() / "qwen3-8b-config.json").read_text()))
    card = lookup_gpu(gpu)
    return calibration_estimate(spec, shape, memory_plan(spec, shape, card).parameters, card)


def test_qwen3_8b_on_h200_matches_the_h200_run_it_was_fitted_on():
    est = _estimate("h200")
    assert est.peak_bytes == pytest.approx(MEASURED["peak_bytes"], rel=0.01)
    for batch, seconds in MEASURED["seconds_per_sample"].items():
        assert _estimate("h200", f"quantization.calibration.batch_size={batch}").seconds_per_sample == pytest.approx(seconds, rel=0.01)
    assert est.calibration_seconds == pytest.approx(est.seconds_per_sample * 512)


def test_batch_size_grows_the_peak_until_a_24_gb_card_no_longer_fits():
    one = _estimate("rtx-4090")
    sixteen = _estimate("rtx-4090", "quantization.calibration.batch_size=16")
    assert one.fits and one.peak_bytes < 24 * GIB
    assert sixteen.logits_bytes == 16 * one.logits_bytes
    assert not sixteen.fits


def test_faster_cards_shrink_only_the_flop_share_and_a_card_without_a_rate_gets_no_time():
    h200, b200 = _estimate("h200"), _estimate("b200")
    assert h200.seconds_per_sample * 989 / 2250 < b200.seconds_per_sample < h200.seconds_per_sample
    assert _estimate("rtx-pro-4000").seconds_per_sample is None
