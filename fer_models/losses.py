"""Training losses for mixed-label batches: FER classes, AUs, valence/arousal, age and gender.

Batches mix datasets, so any head may see a batch in which none of its targets is labelled.
Every loss here then returns an exact zero that is still part of the graph (it has a
``grad_fn`` reaching the inputs, gradient 0), never NaN: ``total.backward()`` and DDP's
"every parameter got a gradient" bookkeeping keep working, and no ``if`` on the data (a host
sync on GPU) is needed. Means divide by ``max(count, 1)``-style denominators for the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_data.labels import IGNORE_INDEX

MIN_OCCURRENCE_RATE = 1e-4  # mdwa_loss: rates are clamped up to this, so an AU never seen gets a finite weight

__all__ = [
    "MIN_OCCURRENCE_RATE",
    "masked_cross_entropy",
    "masked_bce",
    "masked_mse",
    "UncertaintyWeighting",
    "channel_diverse_loss",
    "mdwa_weights",
    "mdwa_loss",
]


def _safe_div(total: Tensor, count: Tensor) -> Tensor:
    """total / count, with count 0 treated as 1 (total is then an exact, graph-connected zero)."""
    return total / torch.where(count > 0, count, torch.ones_like(count))


def masked_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over the entries whose target is not ``ignore_index``.

    Same value as ``F.cross_entropy`` on the labelled subset, but an all-ignored batch gives 0
    (with grad_fn) where torch's mean reduction gives NaN.
    """
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum().to(total.dtype)
    return _safe_div(total, count)


def _expand_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """A float mask shaped like ``like``; a per-sample mask [B] broadcasts over trailing dims ([B, 2] for VA)."""
    if mask is None:
        return torch.ones_like(like)
    m = mask.to(like.dtype)
    while m.dim() < like.dim():
        m = m.unsqueeze(-1)
    return m.expand_as(like)


def masked_bce(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits, averaged over entries with ``mask > 0`` (AU detection).

    ``mask`` may hold weights rather than 0/1 (the mean is then weighted); masked-out targets may
    be anything, even NaN, without leaking into the loss. All-masked batch -> graph-connected 0.
    """
    m = _expand_mask(mask, logits)
    keep = m > 0
    safe_target = torch.where(keep, target.to(logits.dtype), torch.zeros_like(logits))
    per = F.binary_cross_entropy_with_logits(logits, safe_target, reduction="none")
    return _safe_div(torch.where(keep, per * m, torch.zeros_like(per)).sum(), m.sum())


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Squared error averaged over masked-in elements (valence/arousal [B, 2] with a [B] mask, or age).

    Same masking and no-NaN rules as :func:`masked_bce`.
    """
    m = _expand_mask(mask, pred)
    keep = m > 0
    safe_target = torch.where(keep, target.to(pred.dtype), pred.detach())
    per = (pred - safe_target) ** 2
    return _safe_div(torch.where(keep, per * m, torch.zeros_like(per)).sum(), m.sum())


class UncertaintyWeighting(nn.Module):
    """Learned task weighting of Kendall, Gal & Cipolla (CVPR 2018): ``sum_i exp(-s_i) L_i + s_i``.

    ``s_i = log sigma_i^2`` is learned per task (initialised to 0, i.e. weight 1); the ``+ s_i``
    term stops the trivial solution of inflating every sigma. This is the common simplified form
    that drops the paper's 1/2 factors for regression tasks. Tasks whose loss is None (no labels
    in this batch) are skipped, so their s_i is neither pulled down by ``+ s_i`` nor updated.
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError("num_tasks must be >= 1")
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    @property
    def weights(self) -> Tensor:
        """Current per-task weights exp(-s_i), detached, for logging."""
        return torch.exp(-self.log_vars.detach())

    def forward(self, losses: Sequence[Tensor | None] | Mapping[int, Tensor | None],
                present: Tensor | None = None) -> Tensor:
        """Weighted sum of the given scalar losses (a sequence in task order, or {task index: loss}).
        `present` [num_tasks] (0/1, on the device) says which tasks have labels in this batch: an absent
        task's whole term, ``+ s_i`` included, is multiplied by 0, so its log-variance is not pulled down
        by batches that cannot inform it (no host sync, unlike skipping it with an ``if``)."""
        if not isinstance(losses, Mapping) and len(losses) != self.log_vars.numel():
            raise ValueError(f"got {len(losses)} losses for {self.log_vars.numel()} tasks")
        items = losses.items() if isinstance(losses, Mapping) else enumerate(losses)
        pairs = [(i, loss) for i, loss in items if loss is not None]
        total = self.log_vars.sum() * 0  # graph-connected zero when every task is skipped
        for i, loss in pairs:
            s = self.log_vars[i]
            term = torch.exp(-s) * loss + s
            total = total + (term if present is None else present[i] * term)
        return total


def channel_diverse_loss(x: Tensor, num_groups: int = 7) -> Tensor:
    """Channel-diverse loss on features x [B, C] split into ``num_groups`` (one per basic expression).

    With ``g = C // num_groups`` channels per group (the last ``C - num_groups * g`` channels are
    dropped), the loss is ``1 - mean_{b, k}( max_{j in group k} x[b, j] / g )``. This exact formula
    is the spec from the project's issue, not a transcription of the paper: the CAFE paper
    (Zhang et al., 2024; summary in shared/papers/cafe_*) describes the loss only in words —
    the sigmoid-masked CLIP features are split into seven expression subsets and the loss makes
    "the channels ... as diverse as possible" by acting on the maximum of each subset. Minimising
    this form raises every group's peak response, so each expression subset keeps at least one
    strongly active channel; the ``/ g`` normalisation is the issue's choice. For features in
    (0, 1) the value lies in ``[1 - 1/g, 1]``, so it is not comparable across different ``g``.
    """
    if x.dim() != 2:
        raise ValueError(f"expected x of shape [B, C], got {tuple(x.shape)}")
    g = x.shape[1] // num_groups
    if g < 1:
        raise ValueError(f"{x.shape[1]} channels cannot form {num_groups} groups")
    peaks = x[:, : num_groups * g].reshape(x.shape[0], num_groups, g).amax(dim=-1)
    return 1 - (peaks / g).mean()


def mdwa_weights(
    occurrence_rates: Tensor | Sequence[float],
    gamma_bounds: tuple[float, float] = (1.0, 2.0),
    min_rate: float = MIN_OCCURRENCE_RATE,
) -> tuple[Tensor, Tensor]:
    """Per-AU weights ``w`` and negative focusing exponents ``gamma`` of the MDWA loss (AUFormer).

    ``w_i = C * (1/r_i) / sum_j (1/r_j)`` (mean 1, rare AUs weigh more) and
    ``gamma_i = B_L + (B_R - B_L) (r_max - r_i) / (r_max - r_min)``, which is B_L when all rates are
    equal: rarer AUs get larger gamma, down-weighting their many easy negatives. Rates are clamped
    to at least ``min_rate`` so an AU that never occurs in the training split gets a large but
    finite weight instead of inf/NaN.
    """
    r = torch.as_tensor(occurrence_rates, dtype=torch.float64 if not torch.is_tensor(occurrence_rates)
                        else torch.promote_types(occurrence_rates.dtype, torch.float32))
    if r.dim() != 1 or r.numel() == 0:
        raise ValueError(f"occurrence_rates must be a non-empty 1-D [C], got shape {tuple(r.shape)}")
    if r.device.type == "cpu" and not bool(torch.isfinite(r).all() and (r >= 0).all()):
        raise ValueError("occurrence_rates must be finite and >= 0")
    r = r.clamp_min(min_rate)
    inv = 1.0 / r
    w = r.numel() * inv / inv.sum()
    b_l, b_r = gamma_bounds
    spread = r.max() - r.min()
    frac = torch.where(spread > 0, (r.max() - r) / torch.where(spread > 0, spread, torch.ones_like(spread)),
                       torch.zeros_like(r))
    gamma = b_l + (b_r - b_l) * frac
    return w, gamma


def mdwa_loss(
    logits: Tensor,
    targets: Tensor,
    occurrence_rates: Tensor | Sequence[float],
    margin: float = 0.05,
    gamma_bounds: tuple[float, float] = (1.0, 2.0),
    mask: Tensor | None = None,
) -> Tensor:
    """Margin-truncated Difficulty-aware Weighted Asymmetric loss of AUFormer, for AU logits [B, C].

    ``targets`` are 1 (active), 0 (inactive) or -1 (unknown); an optional loader-style ``mask``
    (0 = unknown) is honoured as well. With ``p = sigmoid(logits)``, ``p_m = max(p - margin, 0)``
    and ``w``, ``gamma`` from :func:`mdwa_weights`::

        l = -w_i * [ y log p + (1 - y) p_m^gamma_i log(1 - p_m) ]

    summed over known entries and divided by their count. The margin zeroes the loss of easy
    negatives (p <= margin) and caps the pull on very confident negatives, which may be
    mislabelled positives. Logs are taken in a numerically safe form instead of clamping p:
    ``log p = logsigmoid(x)`` and ``1 - p_m = min(sigmoid(-x) + margin, 1)`` (``logsigmoid(-x)`` when
    margin is 0), so saturated logits such as +-50 give finite values and still-useful gradients.
    All-unknown batch -> graph-connected zero.
    """
    if logits.dim() != 2 or targets.shape != logits.shape:
        raise ValueError(f"logits and targets must both be [B, C]; got {tuple(logits.shape)}, {tuple(targets.shape)}")
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half-precision logs underflow
    w, gamma = mdwa_weights(occurrence_rates, gamma_bounds)
    if w.numel() != x.shape[1]:
        raise ValueError(f"{w.numel()} occurrence rates for {x.shape[1]} AUs")
    w, gamma = w.to(x.device, x.dtype), gamma.to(x.device, x.dtype)

    t = targets.to(x.dtype)
    known = t >= 0  # NaN targets count as unknown too
    if mask is not None:
        known = known & (mask.to(x.device) > 0)
    y = torch.where(known, t, torch.zeros_like(t))

    log_p = F.logsigmoid(x)
    p_m = (torch.sigmoid(x) - margin).clamp_min(0)
    if margin == 0:
        log_1m_pm = F.logsigmoid(-x)
    else:
        log_1m_pm = torch.log((torch.sigmoid(-x) + margin).clamp_max(1.0))
    # p_m ** gamma with a safe base: the pow's derivative at 0 is inf for gamma < 1, and inf * 0 = NaN.
    active = p_m > 0
    focus = torch.where(active, torch.where(active, p_m, torch.ones_like(p_m)) ** gamma, torch.zeros_like(p_m))

    per = -w * (y * log_p + (1 - y) * focus * log_1m_pm)
    total = torch.where(known, per, torch.zeros_like(per)).sum()
    return _safe_div(total, known.sum().to(total.dtype)).to(logits.dtype)
