"""Unlearning layers (EUL, Chen and Yang 2023): a bottleneck adapter after the MLP of every decoder layer,
y ← y + W_up·ReLU(W_down·y), with W_up initialised to zero so that a fresh layer leaves the model unchanged.
Adapters train in place of the frozen base weights and stay in the model (a ReLU does not merge into a
weight): evaluation runs through them.
"""

from __future__ import annotations

import torch


class UnlearningLayer(torch.nn.Module):
    """y + up(ReLU(down(y))): hidden size d, bottleneck d // reduction."""

    def __init__(self, hidden: int, reduction: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        width = max(1, hidden // reduction)
        self.down = torch.nn.Linear(hidden, width, dtype=dtype, device=device)
        self.up = torch.nn.Linear(width, hidden, dtype=dtype, device=device)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.up(torch.relu(self.down(y)))


class WithUnlearningLayer(torch.nn.Module):
    """A decoder layer's MLP followed by its unlearning layer."""

    def __init__(self, mlp: torch.nn.Module, layer: UnlearningLayer) -> None:
        super().__init__()
        self.mlp, self.unlearning_layer = mlp, layer

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.unlearning_layer(self.mlp(*args, **kwargs))


def insert(model: torch.nn.Module, reduction: int) -> list[str]:
    """Freeze the model and put an unlearning layer after every decoder layer's `mlp`; returns the names of
    the new (trainable) parameters."""
    layers = [m for m in model.modules() if hasattr(m, "mlp") and isinstance(m.mlp, torch.nn.Module)]
    if not layers:
        raise ValueError("unlearning layers go after each decoder layer's `mlp`: this model has none")
    model.requires_grad_(False)
    hidden = model.config.hidden_size
    ref = next(model.parameters())
    for decoder_layer in layers:
        decoder_layer.mlp = WithUnlearningLayer(decoder_layer.mlp, UnlearningLayer(hidden, reduction, ref.dtype,
                                                                                   ref.device))
    return [n for n, p in model.named_parameters() if p.requires_grad]
