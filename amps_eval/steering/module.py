"""The L2S auxiliary network and its training (used by both L2S and AMPS).

L2S (Parekh et al. 2025) and AMPS (Eq. 12-13) share the architecture: Linear(D -> H, bias) -> Tanh
-> Linear(H -> D, no bias), mapping the hidden state at the last prompt token to a steering shift.
They differ in targets (AMPS scales them by gamma) and, in the published descriptions, in the loss:
AMPS states plain MSE, the L2S reference code adds L1 and a cosine term. Both are settings here.

Paper defaults (Adam, lr 5e-5, batch 64, 100 epochs, cosine schedule with warm-up) are the defaults,
but with a few hundred samples that learning rate barely moves the weights; every one of them is a
setting so a fit can be made to converge and the choice is recorded in the steering file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["LOSSES", "SteeringMLP", "TrainSettings", "TrainingDiverged", "train_mlp"]

LOSSES = ("mse", "l2s")


class SteeringMLP(nn.Module):
    """g(h) = W2 tanh(W1 h + b1): predicts the shift v for a hidden state h ([..., D] -> [..., D]).

    ``hidden`` is H: 100 by default in L2S, 400 for Qwen in the L2S paper.
    """

    def __init__(self, d_model: int, hidden: int = 100) -> None:
        super().__init__()
        if d_model < 1 or hidden < 1:
            raise ValueError(f"d_model and hidden must be positive, got {d_model}, {hidden}")
        self.d_model, self.hidden = d_model, hidden
        self.encoder = nn.Linear(d_model, hidden, bias=True)
        self.act = nn.Tanh()
        self.decoder = nn.Linear(hidden, d_model, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.act(self.encoder(h)))


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite; the message names the epoch."""


@dataclass(frozen=True)
class TrainSettings:
    """How the steering MLP is trained (recorded in the steering file's settings).

    loss: "mse" (AMPS Eq. 12) or "l2s" (MSE + weight_l1 * L1 - weight_cos * cos, L2S reference).
    warmup_fraction: share of optimiser steps with a linear warm-up before the cosine decay.
    svd_init: initialise the decoder from the top right-singular vectors of the centred targets
    (our reading of the L2S reference: column j = s_j / sqrt(N) * V_j, so that tanh units of unit
    scale reproduce the targets' principal directions at their own spread).
    """

    loss: str = "mse"
    lr: float = 5e-5
    batch_size: int = 64
    epochs: int = 100
    warmup_fraction: float = 0.1
    weight_cos: float = 0.1
    weight_l1: float = 1e-3
    weight_decay: float = 0.0
    svd_init: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        checks = {
            "lr": self.lr > 0 and math.isfinite(self.lr),
            "batch_size": isinstance(self.batch_size, int) and self.batch_size >= 1,
            "epochs": isinstance(self.epochs, int) and self.epochs >= 1,
            "warmup_fraction": 0.0 <= self.warmup_fraction < 1.0,
            "weight_cos": self.weight_cos >= 0,
            "weight_l1": self.weight_l1 >= 0,
            "weight_decay": self.weight_decay >= 0,
            "seed": isinstance(self.seed, int),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid TrainSettings: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def to_dict(self) -> dict:
        return asdict(self)


def _loss(pred: Tensor, target: Tensor, s: TrainSettings) -> Tensor:
    mse = torch.mean((pred - target) ** 2)
    if s.loss == "mse":
        return mse
    l1 = torch.mean(torch.abs(pred - target))
    cos = nn.functional.cosine_similarity(pred, target, dim=-1).mean()
    return mse + s.weight_l1 * l1 - s.weight_cos * cos


def _svd_init(mlp: SteeringMLP, y: Tensor) -> None:
    centred = y - y.mean(dim=0, keepdim=True)
    _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(mlp.hidden, vh.shape[0])
    with torch.no_grad():
        mlp.decoder.weight[:, :k] = (vh[:k] * (sv[:k, None] / math.sqrt(len(y)))).T


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_mlp(
    x: Tensor, y: Tensor, hidden: int, settings: TrainSettings | None = None, progress: bool = True
) -> tuple[SteeringMLP, list[float]]:
    """Fit a SteeringMLP mapping x [N, D] to y [N, D]; returns (module in eval mode, epoch losses).

    Deterministic given ``settings.seed``: initialisation and shuffling draw from a seeded RNG
    inside ``torch.random.fork_rng``, so the caller's global RNG state is left as it was. Trains
    in float32 on x's device.
    """
    s = settings or TrainSettings()
    if x.dim() != 2 or x.shape != y.shape or len(x) == 0:
        raise ValueError(f"x and y must both be [N, D] with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.detach().float(), y.detach().float().to(x.device)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("training data contain non-finite values")
    steps_per_epoch = math.ceil(len(x) / s.batch_size)
    total = steps_per_epoch * s.epochs
    warmup = int(s.warmup_fraction * total)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(s.seed)
        mlp = SteeringMLP(x.shape[1], hidden).to(x.device)
        if s.svd_init:
            _svd_init(mlp, y)
        gen = torch.Generator(device="cpu").manual_seed(s.seed)
    opt = torch.optim.Adam(mlp.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _schedule(step, total, warmup))
    history: list[float] = []
    mlp.train()
    bar = tqdm(range(s.epochs), desc="fit steering MLP", disable=not progress, leave=False)
    for epoch in bar:
        order = torch.randperm(len(x), generator=gen).to(x.device)
        total_loss = 0.0
        for start in range(0, len(x), s.batch_size):
            idx = order[start : start + s.batch_size]
            loss = _loss(mlp(x[idx]), y[idx], s)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"steering MLP loss became {loss.item()} in epoch {epoch + 1}/{s.epochs}; "
                    f"lower the learning rate (lr={s.lr}) or check the targets"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        history.append(total_loss / len(x))
        bar.set_postfix(loss=f"{history[-1]:.4g}")
    return mlp.eval(), history
