"""The packed q, k, v layout of `ember.Attention` (ir/ops/ember_nn.py describes the op),
in a module of its own so that the runtime's attention extern can split a packed tensor
without importing every op family (and with them onnx and ml_dtypes)."""


def split_qkv(qkv, num_heads: int, kv_num_heads: int):
    """q, k, v of a packed [B, S, (H + 2 Hkv) * D] tensor: slices of its last axis
    (views, for numpy arrays and torch tensors alike)."""
    d = qkv.shape[-1] // (num_heads + 2 * kv_num_heads)
    q_end, k_end = num_heads * d, (num_heads + kv_num_heads) * d
    return qkv[..., :q_end], qkv[..., q_end:k_end], qkv[..., k_end:]
