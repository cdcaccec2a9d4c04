"""Figure for docs/reinforce.md: REINFORCE on a toy categorical policy, with seqrl's own code.

For a softmax policy over 5 actions with fixed rewards, draws groups of k = 4 samples, forms
seqrl's REINFORCE loss with each baseline, and takes the gradient with autograd. Left: the
running mean of the estimate of one gradient component converges to the exact gradient for
every baseline (unbiased). Right: the variance of a single group's estimate, per baseline.

    python scripts/plot_reinforce_variance.py   # writes docs/img/reinforce_variance.png, prints the table
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from seqrl import baselines  # noqa: E402
from seqrl.losses import reinforce_loss, token_logprobs  # noqa: E402

REWARDS = torch.tensor([10.0, 10.2, 10.5, 9.8, 10.1])  # a large common offset: where baselines matter
K, GROUPS = 4, 20_000


def group_gradients(theta: torch.Tensor, baseline: str) -> torch.Tensor:
    """One gradient estimate of E[R] per group of K samples: (GROUPS, n_actions)."""
    theta = theta.detach().expand(GROUPS * K, -1).clone().requires_grad_(True)
    actions = torch.multinomial(torch.softmax(theta.detach(), -1), 1)          # (N, 1)
    logp = token_logprobs(theta.unsqueeze(1), actions)                          # (N, 1)
    r = REWARDS[actions.squeeze(1)]
    b = {"none": torch.zeros_like(r),
         "mean (own group, biased)": r.view(-1, K).mean(1, keepdim=True).expand(-1, K).reshape(-1),
         "leave-one-out": baselines.leave_one_out(r, K),
         "greedy (self-critical)": baselines.from_greedy(REWARDS[theta.detach()[::K].argmax(-1)], K)}[baseline]
    # reinforce_loss averages over all N samples; scale back to one estimate per group
    loss = reinforce_loss(logp, torch.ones_like(logp, dtype=torch.bool), r - b) * GROUPS
    (-loss).backward()
    return theta.grad.view(GROUPS, K, -1).sum(1)


def main() -> None:
    torch.manual_seed(0)
    theta = torch.tensor([0.5, -0.2, 0.1, 0.3, -0.4])
    p = torch.softmax(theta, -1)
    exact = p * (REWARDS - (p * REWARDS).sum())
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names, variances = [], []
    print(f"exact gradient: {[round(x, 4) for x in exact.tolist()]}")
    print("| baseline | mean estimate (component 2) | exact | variance of one estimate |")
    print("|---|---|---|---|")
    for name in ("none", "mean (own group, biased)", "leave-one-out", "greedy (self-critical)"):
        g = group_gradients(theta, name)
        running = g[:, 2].cumsum(0) / torch.arange(1, GROUPS + 1)
        left.plot(running.numpy(), label=name, linewidth=1)
        var = float(g.var(0).sum())
        names.append(name)
        variances.append(var)
        print(f"| {name} | {float(g[:, 2].mean()):.4f} | {float(exact[2]):.4f} | {var:.4f} |")
    left.axhline(float(exact[2]), color="black", linestyle="--", linewidth=1, label="exact")
    left.set(xscale="log", xlabel="groups of 4 samples averaged", ylabel="gradient estimate (action 2)",
             title="running mean vs exact gradient", ylim=(float(exact[2]) - 1, float(exact[2]) + 1))
    left.legend(fontsize=7)
    right.bar(range(len(names)), variances, color="tab:blue")
    right.set_xticks(range(len(names)), [n.split(" ")[0] for n in names])
    right.set(yscale="log", ylabel="variance of one estimate (sum over θ)", title="baselines cut the variance")
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "docs" / "img" / "reinforce_variance.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
