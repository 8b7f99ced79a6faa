"""Defects from the correctness review (issue 21): each test fails on the code before its fix."""
from __future__ import annotations

import torch

from selfrl.rollout import inverse_cdf


def test_inverse_cdf_keeps_intervals_narrower_than_float32_spacing():
    # p = [0.75, q, q, q, q] with q = 2^-26: the exact CDF is 0.75 + i*q for token i. Near 0.75 float32 values are
    # 2^-24 = 4q apart, so a float32 CDF stores 0.75 + q and 0.75 + 2q as 0.75 (round to nearest, ties to even) and
    # 0.75 + 3q as 0.75 + 4q: tokens 1 and 2 would get empty intervals (never drawn) and token 3 three times its
    # share. A 150k vocabulary is full of such probabilities. u at the centre of token i's interval,
    # (0.75 + (i - 1/2) q) / total, must draw token i.
    q = 2.0**-26
    p = torch.tensor([[0.75, q, q, q, q]], dtype=torch.float32).repeat(4, 1)  # exact in float32, as the sampler's
    total = 0.75 + 4 * q
    u = torch.tensor([(0.75 + (i - 0.5) * q) / total for i in (1, 2, 3, 4)], dtype=torch.float64)
    assert inverse_cdf(p, u).tolist() == [1, 2, 3, 4]
