"""Our integer grids as GGML quantization blocks, byte for byte.

GGML's legacy types quantize blocks of 32 consecutive weights of a row with one float16 scale d:
Q4_0 stores 4-bit q and means d·(q − 8), the low nibbles holding the block's first 16 weights and
the high nibbles its last 16; Q8_0 stores int8 q and means d·q. Our symmetric grid means
s·(q − 2^(bits−1)) with s already rounded to float16 (`rtn.grid_params`), so a symmetric 4-bit
weight in groups of 32 is exactly Q4_0 and a symmetric 8-bit one exactly Q8_0: same d, same q,
no second rounding. Q4_1 (d·q + m, both float16) is not offered: our asymmetric minimum
−zero·scale needs more mantissa bits than float16 has in general, so it would round again.
"""

from __future__ import annotations

import numpy as np
import torch

from compress.quantize.qweight import QuantizedWeight

BLOCK = 32
#: GGML type for each symmetric bit width whose grid it holds exactly.
EXACT_TYPES = {4: "Q4_0", 8: "Q8_0"}


def exact_type(weight: QuantizedWeight) -> str | None:
    """The GGML type that holds `weight`'s grid without rounding, or None.

    Needs symmetric groups of exactly 32 in input order (act-order's static groups qualify: their
    `g_idx` is still i // 32), scales that are float16 values, and 4 or 8 bits.
    """
    if not weight.sym or weight.group_size != BLOCK or weight.bits not in EXACT_TYPES:
        return None
    contiguous = torch.equal(weight.g_idx.long(), torch.arange(weight.in_features) // BLOCK)
    fp16_scales = torch.equal(weight.scales.to(torch.float16).to(weight.scales.dtype), weight.scales)
    centred = bool((weight.zeros == 2 ** (weight.bits - 1)).all())
    return EXACT_TYPES[weight.bits] if contiguous and fp16_scales and centred else None


def ggml_blocks(weight: QuantizedWeight) -> np.ndarray:
    """`weight` as GGML blocks, [out, in / 32 × block bytes] uint8 (Q4_0: 18 bytes, Q8_0: 34).

    Raises ValueError when its grid is not exactly a GGML type (`exact_type` is None).
    """
    kind = exact_type(weight)
    if kind is None:
        raise ValueError(
            f"a {weight.bits}-bit {'symmetric' if weight.sym else 'asymmetric'} grid in groups of "
            f"{weight.group_size} is not exactly Q4_0 or Q8_0 (those need symmetric groups of 32)"
        )
    rows, blocks = weight.out_features, weight.in_features // BLOCK
    scales = weight.scales.to(torch.float16).numpy().reshape(rows, blocks, 1).view(np.uint8)
    centred = (weight.q - 2 ** (weight.bits - 1)).numpy().reshape(rows, blocks, BLOCK)
    if kind == "Q8_0":
        payload = centred.astype(np.int8).view(np.uint8)
    else:
        nibbles = (centred + 8).astype(np.uint8)
        payload = nibbles[..., : BLOCK // 2] | (nibbles[..., BLOCK // 2 :] << np.uint8(4))
    return np.concatenate([scales, payload], axis=-1).reshape(rows, -1)
