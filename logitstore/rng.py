"""Counter-based random numbers: the ``sample`` method's draws, the audit's positions and the loader's epoch
permutations.

A draw's uniform is a pure function of (seed, sequence key, position, draw index), so sampled targets do not depend
on batch composition, chunk size, worker count, device or restarts. The per-sequence part is hashed on the host
with blake2b; the per-position and per-draw part is a 32-bit integer mixer evaluated in int64 torch ops on the
logits' device. Multiplications are split into 16-bit halves so no intermediate overflows int64.

torch is imported by the two functions that build tensors, so the numpy parts (the audit's positions, permutations)
keep the storage core free of torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_MASK32 = 0xFFFFFFFF


def sequence_stream(seed: int, key: bytes) -> tuple[int, int]:
    """Two 32-bit words identifying the random stream of one sequence under one seed."""
    digest = hashlib.blake2b(seed.to_bytes(8, "little") + key, digest_size=8, person=b"logitstore-rng").digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def position_streams(
    seed: int, keys: Sequence[bytes], lengths: Sequence[int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Streams and positions for the flattened positions of several sequences.

    Returns ``streams [N, 2] int64`` (each row the two words of its sequence) and ``positions [N] int64``
    (0..T-1 within each sequence), with ``N = sum(lengths)``.
    """
    import torch

    words = torch.tensor([sequence_stream(seed, k) for k in keys], dtype=torch.int64).reshape(-1, 2)
    lens = torch.tensor(list(lengths), dtype=torch.int64)
    streams = torch.repeat_interleave(words, lens, dim=0)
    starts = torch.cumsum(lens, 0) - lens
    positions = torch.arange(int(lens.sum()), dtype=torch.int64) - torch.repeat_interleave(starts, lens)
    return streams.to(device), positions.to(device)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (Wellons' lowbias32) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x735A2D97)
    return x ^ (x >> 15)


def uniforms(streams: torch.Tensor, positions: torch.Tensor, num_draws: int) -> torch.Tensor:
    """Uniform doubles in [0, 1) with 53 random bits.

    Args:
        streams: ``[N, 2] int64`` sequence stream words (from :func:`position_streams`).
        positions: ``[N] int64`` position of each row within its sequence.
        num_draws: draws per row.

    Returns:
        ``[N, num_draws] float64``; entry ``[i, d]`` depends only on ``(streams[i], positions[i], d)``.
    """
    import torch

    s0 = streams[:, 0:1] & _MASK32
    s1 = streams[:, 1:2] & _MASK32
    state = _mix32(s0 ^ _mix32((positions[:, None] & _MASK32) ^ _mix32(s1 ^ 0x9E3779B9)))
    # words 2d and 2d + 1 of each row are draw d's high and low halves (one pass over [N, 2 * num_draws])
    word = torch.arange(2 * num_draws, device=streams.device, dtype=torch.int64)[None, :]
    words = _mix32(_mix32(state ^ word) ^ s1)
    hi, lo = words[:, 0::2], words[:, 1::2]
    bits = (hi >> 5) * (1 << 26) + (lo >> 6)  # 27 + 26 = 53 bits
    return bits.to(torch.float64) * (1.0 / (1 << 53))


def audit_uniforms(seed: int, key: bytes, length: int) -> np.ndarray:
    """``[length] float64`` uniforms in [0, 1), one per position: entry t is a pure function of (seed, key, t).

    Used to pick the positions whose full distribution the audit sidecar keeps. Its own blake2b personalization
    makes it independent of the ``sample`` method's draws, and it is computed on the host in numpy, so the choice
    never depends on the device, batch, chunk or worker count.
    """
    digest = hashlib.blake2b(seed.to_bytes(8, "little") + key, digest_size=8, person=b"logitstore-aud").digest()
    stream = np.uint64(int.from_bytes(digest, "little"))
    bits = _splitmix64(_splitmix64(np.arange(length, dtype=np.uint64)) ^ stream) >> np.uint64(11)
    return bits.astype(np.float64) * (1.0 / (1 << 53))


def permutation(n: int, *words: int) -> np.ndarray:
    """A permutation of ``0..n-1`` (``[n] int64``) that is a pure function of ``(n, words)``.

    Sorts splitmix64 hashes of the indices, so the result never depends on numpy's generator algorithms (which may
    change between releases) and every rank and worker computes the same order without communicating.
    """
    state = np.uint64(0x243F6A8885A308D3)
    for w in words:
        state = _splitmix64(np.asarray(state ^ np.uint64(w & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64))[()]
    keys = _splitmix64(np.arange(n, dtype=np.uint64) ^ state)
    return np.argsort(keys, kind="stable").astype(np.int64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
