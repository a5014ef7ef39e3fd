"""Quantized embeddings, as sentence-transformers makes them (its `precision` argument of encode()).

int8 / uint8: each dimension's range (its minimum and maximum over the embeddings, or over calibration
embeddings, or given) is cut into 255 steps, and each value becomes the index of its step (minus 128 for int8).
binary / ubinary: one bit per dimension, set where the value is above 0, packed eight to a byte (minus 128 for
binary).
"""

import numpy as np
import torch

ALLOWED_PRECISIONS = {"float32", "int8", "uint8", "binary", "ubinary"}


def quantize_embeddings(embeddings, precision: str, ranges: np.ndarray | None = None,
                        calibration_embeddings: np.ndarray | None = None) -> np.ndarray:
    """`embeddings` (N, dim) in `precision`: float32, int8, uint8 (N, dim), or binary, ubinary (N, ceil(dim / 8))."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().float().cpu().numpy()
    elif isinstance(embeddings, list):
        embeddings = np.array([e.detach().float().cpu().numpy() if isinstance(e, torch.Tensor) else e
                               for e in embeddings])
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.int8, np.uint8):
        raise ValueError("embeddings to quantize must be floats, not int8 or uint8")
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision in ("int8", "uint8"):
        if ranges is None:
            calibration = embeddings if calibration_embeddings is None else np.asarray(calibration_embeddings)
            if calibration.ndim == 1 or len(calibration) < 2:
                raise ValueError(f"cannot compute {precision} quantization ranges from a single embedding; pass "
                                 "ranges= or calibration_embeddings= from a representative set")
            ranges = np.vstack((calibration.min(axis=0), calibration.max(axis=0)))
        ranges = np.asarray(ranges).astype(np.float32, copy=False)
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        steps_taken = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return (steps_taken - 128).astype(np.int8) if precision == "int8" else steps_taken.astype(np.uint8)
    if precision == "binary":
        return (np.packbits(embeddings > 0, axis=-1) - 128).astype(np.int8)
    if precision == "ubinary":
        return np.packbits(embeddings > 0, axis=-1)
    raise ValueError(f"Precision {precision!r} is not supported")
