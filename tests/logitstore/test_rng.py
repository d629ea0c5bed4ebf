from __future__ import annotations

import numpy as np
import torch

from logitstore.rng import position_streams, sequence_stream, uniforms


def test_uniforms_are_a_function_of_stream_position_and_draw_only() -> None:
    streams, pos = position_streams(3, [b"a" * 16, b"b" * 16], [5, 7])
    u_all = uniforms(streams, pos, 11)
    u_part = uniforms(streams[6:9], pos[6:9], 11)
    assert torch.equal(u_all[6:9], u_part)
    assert torch.equal(uniforms(streams, pos, 4), u_all[:, :4])  # draw d does not depend on how many draws
    assert not torch.equal(u_all[0], u_all[1])  # positions differ
    assert not torch.equal(u_all[0], u_all[5])  # sequences differ
    assert sequence_stream(3, b"a" * 16) != sequence_stream(4, b"a" * 16)  # seeds differ


def test_uniforms_are_uniform() -> None:
    """Chi-square over 64 bins of 640k draws; the 1e-6 critical value of chi2(63) is ~140."""
    streams, pos = position_streams(0, [bytes(16)], [20000])
    u = uniforms(streams, pos, 32).numpy().ravel()
    assert u.min() >= 0.0 and u.max() < 1.0
    counts = np.histogram(u, bins=64, range=(0, 1))[0]
    expected = u.size / 64
    assert ((counts - expected) ** 2 / expected).sum() < 140
    # consecutive draws are uncorrelated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
