"""`train_mlp`'s default recipe against an independent reading of the L2S reference code.

The reference (jayneelparekh/learn-to-steer, src/analysis/learnable_model_steering.py, POPE
setting): SteeringNet = Linear(D, H, bias) -> Tanh -> Linear(H, D, no bias); a 1100/1200
train/validation split; the decoder set to `TruncatedSVD(H).fit(centred train targets).components_.T`;
Adam (lr 5e-5 there), batch 64, 100 epochs, `get_cosine_schedule_with_warmup` with 50 epochs of
warm-up, stepped per batch; training loss per sample MSE + L1 - min(1, epoch/100) * 0.1 * cos,
averaged; validation loss MSE + L1 - 0.05 * cos; the best-validation epoch is kept.

`reference_train` below is written from that description alone (no code shared with
`amps_eval.steering.module` but the network class and the seeded draws, whose order it restates),
with the SVD from an eigen-decomposition instead of `torch.linalg.svd` and the schedule written out.
"""

from __future__ import annotations

import math

import torch

from amps_eval.steering.module import SteeringMLP, TrainSettings, train_mlp


def reference_train(x, y, hidden, seed, lr, epochs, batch):
    n, d = x.shape
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = SteeringMLP(d, hidden)
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=gen)
    n_train = int(n * 1100 / 1200)
    train, val = perm[:n_train], perm[n_train:]
    shifts = y[train].double()
    centred = shifts - shifts.mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)  # ascending
    components = eigenvectors.flip(1)[:, :hidden].T  # [H, D], unit rows: TruncatedSVD.components_
    for row in components:
        if row[row.abs().argmax()] < 0:
            row.neg_()
    with torch.no_grad():
        net.decoder.weight.copy_(components.T.float())
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = math.ceil(n_train / batch)
    warmup, total = (epochs // 2) * steps, epochs * steps

    def factor(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def losses(pred, target, cos_weight):
        rec = ((pred - target) ** 2).mean(dim=1)
        l1 = (pred - target).abs().mean(dim=1)
        cos = torch.nn.functional.cosine_similarity(pred, target, dim=1)
        return rec + l1 - cos_weight * cos

    best, best_state = float("inf"), None
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n_train, generator=gen)
        for start in range(0, n_train, batch):
            rows = train[order[start : start + batch]]
            loss = losses(net(x[rows]), y[rows], min(1.0, epoch / 100) * 0.1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            val_loss = losses(net(x[val]), y[val], 0.05).mean().item()
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net.eval()


def data(n=96, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, d, generator=g) / math.sqrt(d)
    return x, torch.tanh(x @ w) * 3 + 0.1 * torch.randn(n, d, generator=g)


def test_the_default_recipe_is_the_reference_procedure():
    x, y = data()
    settings = TrainSettings(lr=3e-3, epochs=30, batch_size=16, seed=5)
    assert (settings.loss, settings.weight_l1, settings.weight_cos, settings.svd_init) == ("l2s", 1.0, 0.1, "unit")
    ours, _ = train_mlp(x, y, hidden=8, settings=settings, progress=False)
    theirs = reference_train(x, y, hidden=8, seed=5, lr=3e-3, epochs=30, batch=16)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), (a - b).abs().max()


def test_the_decoder_starts_from_unit_svd_directions_of_the_training_targets():
    x, y = data()
    settings = TrainSettings(epochs=1, lr=1e-12, batch_size=96, seed=1)  # (almost) no step: the init
    ours, _ = train_mlp(x, y, hidden=6, settings=settings, progress=False)
    columns = ours.decoder.weight.detach().T  # [H, D]
    assert torch.allclose(columns.norm(dim=1), torch.ones(6), atol=1e-4)
    theirs = reference_train(x, y, hidden=6, seed=1, lr=1e-12, epochs=1, batch=96)
    assert torch.allclose(columns, theirs.decoder.weight.detach().T, atol=1e-4)


def test_the_previous_recipe_stays_available_and_differs():
    x, y = data()
    old = TrainSettings.mse_v1(lr=3e-3, epochs=30, batch_size=16, seed=5)
    assert (old.loss, old.svd_init, old.val_fraction) == ("mse", "scaled", 0.0)
    a, _ = train_mlp(x, y, hidden=8, settings=old, progress=False)
    b, _ = train_mlp(x, y, hidden=8, settings=TrainSettings(lr=3e-3, epochs=30, batch_size=16, seed=5), progress=False)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x), atol=1e-3)
