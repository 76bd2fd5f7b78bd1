"""`recompute` attention: torch's fused CPU kernel forward, a matmul backward.

On CPU, eager attention (matmul, softmax, matmul) trains short sequences fastest, but keeps each
layer's attention probabilities, fp32 and a bf16 copy, for the backward pass (B*H*T*T*6 bytes per
layer). torch's fused sdpa kernel keeps only its output and the softmax log-sum-exp, but its backward
is slower. This kernel takes the fused forward and a backward that rebuilds the probabilities from the
log-sum-exp with one batched matmul, then follows the eager backward:

    P = exp(Q K^T * scale - lse)  (causal)      dV = P^T dO
    dS = P * (dO V^T - rowsum(dO * O))          dQ = dS K * scale      dK = dS^T Q * scale

It serves causal self-attention without a padding mask (right-padded training batches, where causal
attention already hides the padding) and hands every other call (a mask, dropout, a KV cache,
sliding windows, soft-capping, another device) to transformers' sdpa unchanged.
"""


import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from instructune.errors import InstructuneError
from instructune.types import Model

NAME = "recompute"
KEPT_WEIGHTS_LIMIT = 2**30
"""Eager attention for prompt-learning methods while the attention weights it keeps fit this (bytes)."""


class CausalAttention(torch.autograd.Function):
    """softmax(q k^T * scale, causal) v for q, k, v of shape (B, H, T, D), one dtype."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                scale: float) -> torch.Tensor:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)  # lse: (B, H, T) fp32
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 d_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, k, v, out, lse = ctx.saved_tensors
        t = q.shape[-2]
        p = torch.matmul(q, k.transpose(-2, -1)).float().mul_(ctx.scale).sub_(lse.unsqueeze(-1)).exp_()
        p.masked_fill_(torch.ones(t, t, dtype=torch.bool, device=q.device).triu_(1), 0.0)  # (B, H, T, T)
        d_out = d_out.to(q.dtype)
        d_v = torch.matmul(p.to(q.dtype).transpose(-2, -1), d_out)
        d_p = torch.matmul(d_out, v.transpose(-2, -1)).float()
        row = (d_out.float() * out.float()).sum(-1, keepdim=True)  # rowsum(dO * O) = rowsum(P * dP)
        d_s = p.mul_(d_p.sub_(row)).to(q.dtype)
        d_q = torch.matmul(d_s, k).mul_(ctx.scale)
        d_k = torch.matmul(d_s.transpose(-2, -1), q).mul_(ctx.scale)
        return d_q, d_k, d_v, None


def recompute_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs: object) -> tuple[torch.Tensor, None]:
    """transformers attention-interface signature: query (B, H, T, D), key and value (B, H_kv, S, D);
    returns (B, T, H, D) and no attention weights."""
    plain = (attention_mask is None and query.device.type == "cpu" and 1 < query.shape[-2] == key.shape[-2]
             and not (dropout and module.training) and kwargs.get("is_causal", getattr(module, "is_causal", True))
             and all(kwargs.get(k) is None for k in ("sliding_window", "softcap", "position_bias", "cache")))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each K/V head serves `groups` heads
    k, v = (repeat_kv(x, groups).to(dtype) for x in (key, value))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = CausalAttention.apply(query.to(dtype), k, v, scale)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `recompute` a transformers attention implementation (masks built as for sdpa)."""
    AttentionInterface.register(NAME, recompute_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def set_attention(model: Model, implementation: str) -> str:
    """Switch a loaded transformers model to an attention implementation it knows (eager, sdpa,
    recompute, ...); returns the one in use after the switch."""
    if implementation == NAME:
        register()
    if model.config._attn_implementation != implementation:
        try:
            model.set_attn_implementation(implementation)
        except (ValueError, ImportError) as e:
            raise InstructuneError(f"attention: {implementation} is not available for this model "
                                   f"({str(e).splitlines()[0][:200]}); use attention=auto.") from None
    return model.config._attn_implementation


def choose(requested: str, device: str, prompt_learning: bool, batch_size: int, length: int, heads: int,
           layers: int) -> str:
    """`attention: auto` resolved: recompute on CPU, except for prompt-learning methods, whose batches
    carry padding masks that kernel hands to sdpa: eager for them while the attention weights it keeps
    for the backward pass (the fp32 softmax and its bf16 copy, every layer and head) of one micro-batch
    of `length` tokens stay under 1 GiB, sdpa otherwise; sdpa on GPUs.

    Measured (bench/train_throughput.py, bench/results/train_throughput_*.json): with bf16 on an
    AVX512_BF16 CPU (median of 3) recompute trained LoRA 3% and full fine-tuning 1% faster than sdpa
    for up to 2% more peak memory, and eager was 3-4% faster than recompute for 5-10% more. In fp32 on
    an emulated AVX2 CPU (median of 2) recompute was the slowest of the three for LoRA (233 real
    tokens/s against eager 296 and sdpa 260) and for full fine-tuning (215 against 225 and 237), and
    sdpa kept the least memory: the CPU class matters, and this fixed choice is not yet measured per
    machine."""
    if requested != "auto":
        return requested
    if device != "cpu":
        return "sdpa"
    if not prompt_learning:
        return NAME
    kept = batch_size * heads * layers * length ** 2 * (4 + 2)
    return "eager" if kept <= KEPT_WEIGHTS_LIMIT else "sdpa"
