"""The L2S auxiliary network and its training (used by both L2S and AMPS).

L2S (Parekh et al. 2025) and AMPS (Eq. 12-13) share the architecture: Linear(D -> H, bias) -> Tanh
-> Linear(H -> D, no bias), mapping the hidden state at the last prompt token to a steering shift.
AMPS trains it exactly as L2S does, on other targets (scaled by gamma), so that "L2S" in a table
is the "without scaling" row of the ablation.

The default recipe is the L2S reference code's (`TrainSettings.reference()`, from
`src/analysis/learnable_model_steering.py` of jayneelparekh/learn-to-steer, its POPE setting):

* a train/validation split of the fit items, 1100/1200 of them for training; the module of the
  epoch with the lowest validation loss is kept. The reference splits items that are already
  shuffled; MC2 items come ordered by category, so here they are shuffled with the seed first;
* the decoder initialised with the top right-singular vectors of the centred training targets as
  unit-norm columns (`TruncatedSVD(...).components_.T`); the sign of each vector, arbitrary in an
  SVD, is fixed so that its largest entry is positive;
* Adam, lr 5e-5, batch 64, 100 epochs, transformers' cosine schedule with a linear warm-up over the
  first 50 epochs, stepped every batch;
* per-sample loss mean(|p - t|^2) + mean(|p - t|) - min(1, epoch / 100) * 0.1 * cos(p, t) (epoch
  counted from 0), averaged over the batch; the validation loss uses a fixed 0.05 for the cosine.
  The reference also balances "yes" and "no" answers within a batch, which has no counterpart in
  MC2: batches are plain means here.

`TrainSettings.mse_v1()` is the recipe amps-eval used before (plain MSE as AMPS Eq. 12 states, the
SVD directions scaled by s_j / sqrt(N), 10% warm-up, the last epoch, no validation split). Every
field is a setting and the settings are recorded in the steering file.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from amps_eval.steering.train_settings import LOSSES, SVD_INITS, TrainSettings  # re-exported

__all__ = ["LOSSES", "SVD_INITS", "SteeringMLP", "TrainSettings", "TrainingDiverged", "split_train_val", "train_mlp"]


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


def sample_losses(pred: Tensor, target: Tensor, loss: str, weight_l1: float, weight_cos: float) -> Tensor:
    """The per-sample loss [N]: mean squared error, plus for "l2s" weight_l1 * mean absolute error
    minus weight_cos * cosine similarity."""
    mse = ((pred - target) ** 2).mean(dim=-1)
    if loss == "mse":
        return mse
    l1 = (pred - target).abs().mean(dim=-1)
    cos = nn.functional.cosine_similarity(pred, target, dim=-1)
    return mse + weight_l1 * l1 - weight_cos * cos


def svd_directions(y: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(singular values [k], unit right-singular vectors [k, D]) of the centred ``y``; each vector's
    sign makes its largest-magnitude entry positive."""
    centred = y - y.mean(dim=0, keepdim=True)
    _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
    sv, vh = sv[:k], vh[:k]
    pivot = vh.abs().argmax(dim=1)
    signs = torch.sign(vh[torch.arange(len(vh)), pivot])
    return sv, vh * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]


def _svd_init(mlp: SteeringMLP, y: Tensor, how: str) -> None:
    if how == "none":
        return
    k = min(mlp.hidden, y.shape[0], y.shape[1])
    sv, vh = svd_directions(y, k)
    columns = vh if how == "unit" else vh * (sv[:, None] / math.sqrt(len(y)))
    with torch.no_grad():
        mlp.decoder.weight[:, :k] = columns.T


def split_train_val(n: int, val_fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(train rows, validation rows) of ``n`` items: a seeded permutation, the first
    int(n * (1 - val_fraction)) for training (the reference's rounding); no validation when that
    leaves no training item or no validation item."""
    order = torch.randperm(n, generator=generator)
    n_train = int(n * (1.0 - val_fraction))
    if val_fraction == 0 or n_train < 1 or n_train >= n:
        return torch.arange(n), torch.arange(0)
    return order[:n_train], order[n_train:]


def train_mlp(
    x: Tensor, y: Tensor, hidden: int, settings: TrainSettings | None = None, progress: bool = True
) -> tuple[SteeringMLP, list[float]]:
    """Fit a SteeringMLP mapping x [N, D] to y [N, D]; returns (module in eval mode, epoch losses).

    With a validation split the returned module is the one of the epoch with the lowest
    validation loss. Deterministic given ``settings.seed``: initialisation, the split and the
    shuffling draw from seeded RNGs inside ``torch.random.fork_rng``, so the caller's global RNG
    state is left as it was. Trains in float32 on x's device.
    """
    from transformers import get_cosine_schedule_with_warmup

    s = settings or TrainSettings()
    if x.dim() != 2 or x.shape != y.shape or len(x) == 0:
        raise ValueError(f"x and y must both be [N, D] with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.detach().float(), y.detach().float().to(x.device)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("training data contain non-finite values")
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(s.seed)
        mlp = SteeringMLP(x.shape[1], hidden).to(x.device)
        gen = torch.Generator(device="cpu").manual_seed(s.seed)
        train_rows, val_rows = split_train_val(len(x), s.val_fraction, gen)
        train_rows, val_rows = train_rows.to(x.device), val_rows.to(x.device)
        _svd_init(mlp, y[train_rows], s.svd_init)
    x_train, y_train = x[train_rows], y[train_rows]
    steps_per_epoch = math.ceil(len(x_train) / s.batch_size)
    total = steps_per_epoch * s.epochs
    opt = torch.optim.Adam(mlp.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(s.warmup_fraction * total), total)
    history: list[float] = []
    best_val, best_state = math.inf, None
    bar = tqdm(range(s.epochs), desc="fit steering MLP", disable=not progress, leave=False)
    for epoch in bar:
        mlp.train()
        order = torch.randperm(len(x_train), generator=gen).to(x.device)
        total_loss = 0.0
        for start in range(0, len(x_train), s.batch_size):
            idx = order[start : start + s.batch_size]
            loss = sample_losses(mlp(x_train[idx]), y_train[idx], s.loss, s.weight_l1, s.cos_weight(epoch)).mean()
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
        history.append(total_loss / len(x_train))
        if len(val_rows):
            mlp.eval()
            with torch.no_grad():
                val = sample_losses(mlp(x[val_rows]), y[val_rows], s.loss, s.weight_l1, s.val_weight_cos).mean().item()
            if val < best_val:
                best_val, best_state = val, {k: t.detach().clone() for k, t in mlp.state_dict().items()}
        bar.set_postfix(loss=f"{history[-1]:.4g}")
    if best_state is not None:
        mlp.load_state_dict(best_state)
    return mlp.eval(), history
