"""Gated low-rank adapters.

For a frozen linear layer ``y = W x`` an adapter adds a gated low-rank update::

    y = W x + s_l * g_t * (B A dropout(x) * scaling + R x)
    g_t = sigmoid(w_g . x_t + b_g)      token gate: per token, input-dependent, in (0, 1)
    s_l = sigmoid(alpha_l)              structural gate: one scalar per insertion point

``A`` is ``(r, d_in)``, ``B`` is ``(d_out, r)`` and starts at zero, so a fresh adapter
leaves the base output untouched. ``R`` (``lora_residual``, ``(d_out, d_in)``) exists only with
``adapter.dense-residual``: a frozen dense update the server sends (FedEx-LoRA's aggregation
residual, FLoRA's merged updates); it is never trained and never sent back. With both gates switched off the module is plain LoRA
(the same arithmetic as peft's ``lora.Linear``), which the tests check numerically.

The original layer is kept as ``base_layer`` (wrap, don't fork). Hugging Face's ``Conv1D``
(GPT-2 style, weight stored as ``(d_in, d_out)``) is supported next to ``nn.Linear``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedgate.config.model import AdapterSpec


def _base_shape(base_layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a supported base layer."""
    if isinstance(base_layer, nn.Linear):
        return base_layer.in_features, base_layer.out_features
    if type(base_layer).__name__ == "Conv1D" and hasattr(base_layer, "nf"):
        d_in, d_out = base_layer.weight.shape  # Conv1D stores (d_in, d_out)
        return d_in, d_out
    raise TypeError(
        f"cannot wrap {type(base_layer).__name__}: only nn.Linear and transformers' Conv1D are supported"
    )


class GatedLoRALinear(nn.Module):
    """A frozen linear layer plus a gated low-rank update (see module docstring)."""

    # Every parameter name an adapter owns; the rest of the module (base_layer) stays frozen.
    adapter_param_names: tuple[str, ...] = ("lora_A", "lora_B", "gate_weight", "gate_bias", "struct_logit",
                                            "lora_residual")
    frozen_param_names: tuple[str, ...] = ("lora_residual",)  # set by the server, never trained

    def __init__(self, base_layer: nn.Module, spec: AdapterSpec) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.spec = spec
        self.in_features, self.out_features = _base_shape(base_layer)
        self.is_conv1d = not isinstance(base_layer, nn.Linear)
        self.scaling = spec.scaling
        ref = base_layer.weight
        # a quantized base layer (bitsandbytes) stores packed integers: the adapter trains in
        # the layer's compute dtype, as QLoRA does
        dtype = ref.dtype if ref.is_floating_point() else (getattr(base_layer, "compute_dtype", None) or torch.float32)
        kw = {"device": ref.device, "dtype": dtype}
        self.lora_A = nn.Parameter(torch.empty(spec.r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, spec.r, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # same init as nn.Linear / peft
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.lora_residual = (nn.Parameter(torch.zeros(self.out_features, self.in_features, **kw), requires_grad=False)
                              if spec.dense_residual else None)
        if spec.token_gate:
            self.gate_weight = nn.Parameter(torch.zeros(self.in_features, **kw))
            self.gate_bias = nn.Parameter(torch.full((1,), spec.gate_init, **kw))
        else:
            self.gate_weight = None
            self.gate_bias = None
        # gate_bias and struct_logit have shape (1,), not (): DeepSpeed broadcasts parameters as bytes,
        # which a 0-d tensor cannot be viewed as
        self.struct_logit = nn.Parameter(torch.full((1,), spec.struct_init, **kw)) if spec.structural_gate else None
        self.merged = False
        self.enabled = True
        # Token-gate record since the last reset_gate_record(), read by the loss (with graph)
        # and by train.py. A model call may run the backbone more than once (prompt, then
        # response); the record spans all of them. token_mask (batch, seq), set by the caller,
        # keeps padding out of the mean. RewardModel.forward resets the record; code calling a
        # backbone directly must call reset_gate_record() (inject.reset_gate_records) per step.
        self.token_mask: torch.Tensor | None = None
        self._gate_sum: torch.Tensor | None = None
        self._gate_count = 0.0
        self._frobenius: torch.Tensor | None = None  # penalty inputs recorded in forward (ZeRO-3)
        self._structural: torch.Tensor | None = None
        self.adapter_names = tuple(n for n in self.adapter_param_names if getattr(self, n) is not None)

    # ----------------------------------------------------------------------------- gates
    def structural_gate(self) -> torch.Tensor:
        """s_l in (0, 1); exactly 1 when the structural gate is switched off."""
        if self.struct_logit is None:
            return torch.ones((), device=self.lora_A.device, dtype=self.lora_A.dtype)
        return torch.sigmoid(self.struct_logit).squeeze(0)  # a 0-d tensor, like the case above

    def token_gate(self, x: torch.Tensor) -> torch.Tensor | None:
        """g_t per token, shape (..., 1); None when the token gate is switched off."""
        if self.gate_weight is None:
            return None
        logits = F.linear(x.to(self.gate_weight.dtype), self.gate_weight[None], self.gate_bias)
        return torch.sigmoid(logits)  # (..., 1)

    # ----------------------------------------------------------------------------- forward
    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The gated low-rank update for input x: (..., d_in) -> (..., d_out)."""
        dtype = self.lora_A.dtype
        h = F.linear(F.linear(self.dropout(x).to(dtype), self.lora_A), self.lora_B) * self.scaling
        if self.lora_residual is not None:
            h = h + F.linear(x.to(dtype), self.lora_residual)
        gate = self.token_gate(x)
        if gate is not None:
            self._record_gate(gate)
            h = h * gate
        if self._partitioned() and self._frobenius is None:
            # once per model call: under ZeRO-3 the weights are whole only inside forward
            self._frobenius = self.frobenius_sq()
            self._structural = self.structural_gate()
        if self.struct_logit is not None:
            h = h * torch.sigmoid(self.struct_logit)
        return h

    def _record_gate(self, gate: torch.Tensor) -> None:
        """Add this forward's gate values (without padding where a mask fits) to the record."""
        g = gate.squeeze(-1).float()  # (...,) e.g. (batch, seq)
        mask = self.token_mask
        if mask is not None and tuple(mask.shape) == tuple(g.shape):
            m = mask.to(g.dtype)
            total, count = (g * m).sum(), float(m.sum())
        else:
            total, count = g.sum(), float(g.numel())
        self._gate_sum = total if self._gate_sum is None else self._gate_sum + total
        self._gate_count += count

    def reset_gate_record(self) -> None:
        self._gate_sum, self._gate_count = None, 0.0
        self._frobenius = self._structural = None

    def _partitioned(self) -> bool:
        """Whether DeepSpeed ZeRO-3 owns the weights (whole only inside the forward pass)."""
        return hasattr(self.lora_A, "ds_id")

    @property
    def last_frobenius_sq(self) -> torch.Tensor:
        """||B A||_F^2 for the loss: computed now, or under ZeRO-3 as recorded in the last
        forward pass (with graph)."""
        if self._partitioned() and self._frobenius is not None:
            return self._frobenius
        return self.frobenius_sq()

    @property
    def last_structural_gate(self) -> torch.Tensor:
        """s_l for the loss: computed now, or under ZeRO-3 as recorded in the last forward."""
        if self._partitioned() and self._structural is not None:
            return self._structural
        return self.structural_gate()

    @property
    def token_gate_record(self) -> tuple[torch.Tensor | None, float]:
        """(sum, with graph; count) of the unpadded token gates seen since the last reset:
        what ranks training one client add up to get the whole batch's mean, and the gate-KL
        gradient of that mean (train.fit, losses.shared_gate_kl)."""
        return self._gate_sum, float(self._gate_count)

    @property
    def last_token_gate_mean(self) -> torch.Tensor | None:
        """Mean token gate over the (unpadded) tokens seen since the last reset; None if none."""
        if self._gate_sum is None or self._gate_count == 0:
            return None
        return self._gate_sum / self._gate_count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged or not self.enabled:
            return result
        return result + self.lora_delta(x).to(result.dtype)

    # ----------------------------------------------------------------------------- merging
    def delta_weight(self) -> torch.Tensor:
        """s_l * (scaling * B A + R) in the base layer's weight layout (Conv1D stores it transposed)."""
        if self.gate_weight is not None:
            raise RuntimeError(
                "cannot merge an adapter with an input-dependent token gate: the update is not a "
                "constant matrix; build the adapter with token_gate=False to merge it"
            )
        dw = (self.lora_B @ self.lora_A) * self.scaling  # (d_out, d_in)
        if self.lora_residual is not None:
            dw = dw + self.lora_residual
        dw = dw * self.structural_gate()
        return dw.T if self.is_conv1d else dw

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into base_layer.weight for inference (only for constant gates)."""
        if self.merged:
            return
        w = self.base_layer.weight
        if not w.is_floating_point():
            raise ValueError("cannot merge an adapter into quantized weights (model.quantize): keep it separate")
        w.add_(self.delta_weight().to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo merge(): subtract the update from base_layer.weight again."""
        if not self.merged:
            return
        w = self.base_layer.weight
        w.sub_(self.delta_weight().to(w.dtype))
        self.merged = False

    # ----------------------------------------------------------------------------- terms
    def frobenius_sq(self) -> torch.Tensor:
        """||B A||_F^2 without forming B A: trace((B^T B)(A A^T)), two r x r products."""
        return ((self.lora_B.T @ self.lora_B) * (self.lora_A @ self.lora_A.T)).sum()

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"d_in={self.in_features}, d_out={self.out_features}, r={s.r}, alpha={s.alpha}, "
            f"token_gate={s.token_gate}, structural_gate={s.structural_gate}"
        )
