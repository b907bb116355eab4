"""Training of the hybrid forecaster, split-conformal calibration and prediction.

Training data are per-minute series (from the Feast training set or from traces), each
with the end of the range the model may learn from. The last ``holdout_fraction`` of
every series' range is held back: it picks the checkpoint (lowest held-back loss) and
then calibrates the intervals; the model never trains on it.

Calibration (split conformal) works on the held-back windows in scale units, per horizon,
in two steps (:func:`_offsets`): each quantile level is shifted so that a share ``tau`` of
held-back values lies below it; then each central interval (0.05-0.95, 0.1-0.9,
0.25-0.75) is widened or narrowed symmetrically, conformalized-quantile-regression style,
until it covers its nominal share of the held-back values. Offsets are kept per series
(at least ``MIN_CALIBRATION`` windows) and pooled over all series for services the model
has not seen. Quantiles are re-sorted and clipped at 0 afterwards.

The same code runs on a GPU when one is present (``device="auto"``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from models.forecaster.model import HybridForecaster, NetworkConfig
from models.forecaster.windows import ModelInputs, build_inputs, minute_of, series_windows

log = logging.getLogger(__name__)

MIN_CALIBRATION = 200
"""Held-back windows a series needs for its own conformal offsets."""
MIN_HISTORY = 180
"""Minutes of a series before its first training window (the recent encoder's 120 plus
some level)."""

Array = np.ndarray


@dataclass(frozen=True)
class TrainConfig:
    """How to train (every field is a knob of the training flow).

    Args:
        network: Network shape, horizons and quantiles.
        batch_size: Windows per optimiser step.
        learning_rate: AdamW peak learning rate (cosine decay to 5% of it).
        weight_decay: AdamW weight decay.
        max_steps: Optimiser steps at most.
        epochs: When set, passes over the training windows instead: the step count is
            ``ceil(epochs * windows / batch_size)`` (``max_steps`` is then ignored).
        members: Networks trained from seeds ``seed, seed + 1, ...`` whose quantiles
            are averaged (an ensemble); steps and epochs are per member, the time budget
            is shared.
        max_minutes: Wall-clock budget of the optimisation loop; training stops at the
            first of this and ``max_steps``.
        holdout_fraction: Tail of each series' range held back for checkpoint choice and
            calibration.
        eval_every: Steps between held-back evaluations.
        max_windows_per_series: Training windows kept per series (evenly strided).
        holdout_windows_per_series: Held-back windows kept per series.
        seed: Seed of the sampling and of the initial weights.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    network: NetworkConfig = field(default_factory=NetworkConfig)
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    max_steps: int = 4000
    epochs: float | None = None
    members: int = 1
    max_minutes: float = 8.0
    holdout_fraction: float = 0.2
    eval_every: int = 200
    max_windows_per_series: int = 30_000
    holdout_windows_per_series: int = 3_000
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 2 or self.max_steps < 1 or self.eval_every < 1:
            raise ValueError("batch_size must be >= 2, max_steps and eval_every >= 1")
        if not 0 < self.holdout_fraction < 0.5:
            raise ValueError("holdout_fraction must be in (0, 0.5)")
        if self.members < 1:
            raise ValueError("members must be >= 1")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError("epochs must be > 0 when set")
        if self.max_minutes <= 0 or self.learning_rate <= 0:
            raise ValueError("max_minutes and learning_rate must be > 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError("device must be auto, cpu or cuda")


@dataclass(frozen=True)
class SeriesData:
    """One service's per-minute history.

    Args:
        name: Service id (keys the per-series calibration).
        start: Timestamp of ``values[0]`` (naive UTC in the store).
        values: Events per minute, NaN where missing.
        end: Positions ``< end`` may be learned from (targets included).
        calendar: Optional (len(values), 3) is_holiday, business_event, multiplier per
            minute (known future).
        criticality: Service tier 1..3, if known.
    """

    name: str
    start: pd.Timestamp
    values: Array
    end: int
    calendar: Array | None = None
    criticality: float | None = None


@dataclass
class Calibration:
    """Conformal offsets in scale units, shape (H, Q), per series and pooled."""

    pooled: Array
    per_series: dict[str, Array]
    coverage_before: dict[str, float]
    coverage_after: dict[str, float]

    def offsets(self, names: Sequence[str | None]) -> Array:
        """(n, H, Q) offsets for each row's series (pooled for unknown ones)."""
        return np.stack([self.per_series.get(n or "", self.pooled) for n in names])


@dataclass
class Windows:
    """Raw sequence windows of one series at last-observed positions."""

    name: str
    recent: Array
    hourly: Array
    ts_minute: Array
    targets: Array  # (n, H) actual counts, NaN where missing
    calendar: Array | None  # (n, H, 3)
    criticality: float | None

    def __len__(self) -> int:
        return int(self.ts_minute.shape[0])

    def inputs(self, index: Array, horizons: tuple[int, ...]) -> ModelInputs:
        """Model inputs of the rows at ``index``."""
        crit = None if self.criticality is None else np.full(len(index), self.criticality)
        return build_inputs(
            self.recent[index],
            self.hourly[index],
            self.ts_minute[index],
            horizons,
            calendar=None if self.calendar is None else self.calendar[index],
            criticality=crit,
        )


def cut_windows(
    series: SeriesData, positions: Array, horizons: tuple[int, ...], *, with_targets: bool = True
) -> Windows:
    """Windows of ``series`` whose last observed minute is each of ``positions``."""
    values = np.asarray(series.values, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.int64)
    recent, hourly = series_windows(values, series.start, pos)
    target_pos = pos[:, None] + np.asarray(horizons)[None, :]
    if with_targets:
        if (target_pos >= len(values)).any():
            raise ValueError("a target lies beyond the series")
        targets = values[target_pos]
    else:
        targets = np.full(target_pos.shape, np.nan)
    cal = None
    if series.calendar is not None:
        c = np.asarray(series.calendar, dtype=np.float64)
        cal = c[np.clip(target_pos, 0, len(c) - 1)]
        cal[target_pos >= len(c)] = np.nan
    return Windows(
        series.name,
        recent,
        hourly,
        minute_of(series.start) + pos,
        targets,
        cal,
        series.criticality,
    )


def _strided(lo: int, hi: int, limit: int) -> Array:
    if hi <= lo:
        return np.empty(0, dtype=np.int64)
    stride = max(1, math.ceil((hi - lo) / limit))
    return np.arange(lo, hi, stride, dtype=np.int64)


def split_windows(series: SeriesData, config: TrainConfig) -> tuple[Windows, Windows]:
    """Training and held-back windows of one series (targets never cross the cut).

    Raises:
        ValueError: If the series is too short to hold back a range.
    """
    horizons = config.network.horizons
    max_h = max(horizons)
    end = min(series.end, len(series.values))
    cut = end - round(end * config.holdout_fraction)
    first = MIN_HISTORY
    if cut - max_h - first < 10 or end - max_h - cut < 10:
        raise ValueError(
            f"series {series.name!r}: {end} minutes are too few to train and hold back "
            f"{config.holdout_fraction:.0%}; give at least {int(4 * (max_h + first))} minutes"
        )
    train_pos = _strided(first, cut - max_h, config.max_windows_per_series)
    hold_pos = _strided(cut, end - max_h, config.holdout_windows_per_series)
    return cut_windows(series, train_pos, horizons), cut_windows(series, hold_pos, horizons)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def _tensors(inputs: ModelInputs, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.from_numpy(a).to(device)
        for a in (inputs.hourly, inputs.recent, inputs.future, inputs.static)
    )


def _raw_predict(
    net: HybridForecaster, inputs: ModelInputs, device: torch.device, batch: int = 4096
) -> Array:
    """Network output in scale units, (n, H, Q)."""
    net.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(inputs), batch):
            part = inputs.take(np.arange(lo, min(lo + batch, len(inputs))))
            out.append(net(*_tensors(part, device)).float().cpu().numpy())
    n_h, n_q = len(net.config.horizons), len(net.config.quantiles)
    return np.concatenate(out) if out else np.empty((0, n_h, n_q), dtype=np.float32)


def _masked_pinball(
    pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor
) -> torch.Tensor:
    mask = ~torch.isnan(target)
    safe = torch.where(mask, target, torch.zeros_like(target))
    diff = safe.unsqueeze(-1) - pred
    loss = torch.maximum(quantiles * diff, (quantiles - 1.0) * diff)
    weight = mask.unsqueeze(-1).to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp(min=1.0) / len(quantiles)


@dataclass
class TrainReport:
    """What training did: steps, time, losses, device."""

    steps: int
    seconds: float
    best_step: int
    best_holdout_loss: float
    device: str
    train_windows: int
    holdout_windows: int
    history: list[tuple[int, float, float]] = field(default_factory=list)
    member_best_steps: list[int] = field(default_factory=list)


class Forecaster:
    """Trained networks with their calibration: the object serving and benchmarks use.

    With several networks (an ensemble of members trained from different seeds) the
    quantiles are the members' averages, which stay ascending; the calibration is that of
    the ensemble's output.
    """

    def __init__(
        self,
        nets: HybridForecaster | Sequence[HybridForecaster],
        calibration: Calibration | None,
        device: torch.device | None = None,
    ) -> None:
        self.nets = [nets] if isinstance(nets, HybridForecaster) else list(nets)
        if not self.nets:
            raise ValueError("a forecaster needs at least one network")
        configs = {(n.config.horizons, n.config.quantiles) for n in self.nets}
        if len(configs) != 1:
            raise ValueError("ensemble members must share horizons and quantiles")
        self.calibration = calibration
        self.device = device or torch.device("cpu")
        for n in self.nets:
            n.to(self.device)

    @property
    def net(self) -> HybridForecaster:
        """The first member (its configuration is every member's horizons and quantiles)."""
        return self.nets[0]

    @property
    def horizons(self) -> tuple[int, ...]:
        return self.net.config.horizons

    @property
    def quantiles(self) -> tuple[float, ...]:
        return self.net.config.quantiles

    def raw(self, inputs: ModelInputs) -> Array:
        """Uncalibrated output in scale units, (n, H, Q): the members' mean."""
        return np.mean(
            [_raw_predict(n, inputs, self.device).astype(np.float64) for n in self.nets], axis=0
        )

    def predict(
        self,
        inputs: ModelInputs,
        names: Sequence[str | None] | None = None,
        *,
        calibrated: bool = True,
    ) -> Array:
        """Quantile forecasts in events per minute.

        Args:
            inputs: Model inputs of n rows.
            names: Series (service) of each row, for per-series calibration.
            calibrated: Apply the conformal offsets (when the model has them).

        Returns:
            (n, H, Q) float64, non-negative and ascending along the last axis.
        """
        raw = self.raw(inputs)
        if calibrated and self.calibration is not None and len(raw):
            raw = raw + self.calibration.offsets(names or [None] * len(raw))
        out = raw * inputs.scale.astype(np.float64)[:, None, None]
        return np.maximum(np.sort(out, axis=-1), 0.0)

    def predict_windows(self, windows: Windows, *, calibrated: bool = True) -> Array:
        """Forecasts for every row of ``windows`` (its name keys the calibration)."""
        idx = np.arange(len(windows))
        inputs = windows.inputs(idx, self.horizons)
        return self.predict(inputs, [windows.name] * len(windows), calibrated=calibrated)


def calibrate(
    forecaster: Forecaster, holdout: Sequence[Windows], min_windows: int = MIN_CALIBRATION
) -> Calibration:
    """Conformal offsets from held-back windows (module docstring), per series and pooled."""
    quantiles = np.asarray(forecaster.quantiles)
    per: dict[str, Array] = {}
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    pooled_raw, pooled_y = [], []
    for w in holdout:
        if not len(w):
            continue
        inputs = w.inputs(np.arange(len(w)), forecaster.horizons)
        raw = forecaster.raw(inputs)
        y = w.targets / inputs.scale.astype(np.float64)[:, None]  # scale units
        pooled_raw.append(raw)
        pooled_y.append(y)
        before[w.name] = _coverage_80(raw, y, quantiles)
        if (~np.isnan(y)).sum(axis=0).min() >= min_windows:
            per[w.name] = _offsets(raw, y, quantiles)
            after[w.name] = _coverage_80(raw + per[w.name], y, quantiles)
    if not pooled_raw:
        raise ValueError("no held-back windows to calibrate on")
    pooled = _offsets(np.concatenate(pooled_raw), np.concatenate(pooled_y), quantiles)
    for w_raw, w_y, w in zip(pooled_raw, pooled_y, [w for w in holdout if len(w)], strict=True):
        if w.name not in per:
            after[w.name] = _coverage_80(w_raw + pooled, w_y, quantiles)
    return Calibration(pooled, per, before, after)


def _finish_scaled(values: Array) -> Array:
    """What :meth:`Forecaster.predict` does after the offsets, in scale units."""
    return np.maximum(np.sort(values, axis=-1), 0.0)


def _coverage_80(raw: Array, y: Array, quantiles: Array) -> float:
    """Share of values inside [q0.1, q0.9] (NaN targets ignored)."""
    fc = _finish_scaled(raw)
    lo = fc[..., int(np.argmin(np.abs(quantiles - 0.1)))]
    hi = fc[..., int(np.argmin(np.abs(quantiles - 0.9)))]
    valid = ~np.isnan(y)
    inside = (y >= lo) & (y <= hi)
    return float(inside[valid].mean()) if valid.any() else math.nan


def _offsets(raw: Array, y: Array, quantiles: Array) -> Array:
    """Conformal offsets (H, Q) in scale units from predictions and targets (n, H[, Q]).

    Step 1, per level: the level's empirical quantile of ``y - q_tau`` (each quantile
    marginally calibrated). Step 2, per central interval (levels tau and 1 - tau): the
    conformalized-quantile-regression widening (negative: narrowing) ``d`` that makes the
    interval, clipped at 0 as served, cover its nominal share: the
    ``ceil((n + 1)(1 - 2 tau)) / n`` empirical quantile of ``max(lo - y, y - hi)``.
    Step 2 matters where step 1 cannot reach the nominal coverage, e.g. sparse counts
    where the lower bound sits at 0 and every zero is covered.
    """
    n_h, n_q = raw.shape[1], raw.shape[2]
    out = np.zeros((n_h, n_q))
    for j, q in enumerate(quantiles):
        with np.errstate(invalid="ignore"):
            out[:, j] = np.nan_to_num(np.nanquantile(y - raw[:, :, j], q, axis=0), nan=0.0)
    shifted = raw + out
    for i in range(n_q // 2):
        k = n_q - 1 - i
        if not math.isclose(quantiles[i] + quantiles[k], 1.0):
            continue
        nominal = quantiles[k] - quantiles[i]
        lo = np.maximum(shifted[:, :, i], 0.0)
        hi = np.maximum(shifted[:, :, k], 0.0)
        conformity = np.maximum(lo - y, y - hi)  # (n, H); <= 0 inside
        for h in range(n_h):
            col = conformity[:, h]
            col = col[~np.isnan(col)]
            if not len(col):
                continue
            level = min(1.0, math.ceil((len(col) + 1) * nominal) / len(col))
            d = float(np.quantile(col, level))
            out[h, i] -= d
            out[h, k] += d
    return out


@dataclass
class _Member:
    net: HybridForecaster
    steps: int
    best_step: int
    best_loss: float
    history: list[tuple[int, float, float]]


def _train_member(
    train_w: Sequence[Windows],
    eval_sets: Sequence[tuple[ModelInputs, Array]],
    config: TrainConfig,
    *,
    seed: int,
    max_steps: int,
    budget_s: float,
    device: torch.device,
    progress: Callable[[int, float, float], None] | None,
) -> _Member:
    """One network: AdamW, cosine decay, best held-back checkpoint kept."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    horizons = config.network.horizons
    net = HybridForecaster(config.network).to(device)
    opt = torch.optim.AdamW(
        net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    q_t = torch.tensor(config.network.quantiles, dtype=torch.float32, device=device)
    qs = np.asarray(config.network.quantiles)

    def holdout_loss() -> float:
        losses = []
        for inp, y in eval_sets:
            diff = y[:, :, None] - _raw_predict(net, inp, device)
            losses.append(float(np.nanmean(np.maximum(qs * diff, (qs - 1.0) * diff))))
        return float(np.mean(losses))  # every series weighs the same

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    best_loss, best_step, best_state = math.inf, 0, snapshot()
    history: list[tuple[int, float, float]] = []
    t0 = time.perf_counter()
    step = 0
    running = 0.0
    n_series = len(train_w)
    while step < max_steps and time.perf_counter() - t0 < budget_s:
        net.train()
        # Series drawn evenly so a long trace does not drown a short one.
        which = rng.integers(0, n_series, size=config.batch_size)
        parts_in = []
        parts_y = []
        for k in np.unique(which):
            count = int((which == k).sum())
            idx = rng.integers(0, len(train_w[k]), size=count)
            inp = train_w[k].inputs(idx, horizons)
            parts_in.append(inp)
            parts_y.append(train_w[k].targets[idx] / inp.scale[:, None])
        batch = ModelInputs(*(np.concatenate([getattr(p, f) for p in parts_in]) for f in _FIELDS))
        target = torch.from_numpy(np.concatenate(parts_y).astype(np.float32)).to(device)
        # Cosine decay over whichever runs out first, steps or wall-clock budget, so a
        # run cut short by time still ends at a low learning rate.
        done = min(1.0, max(step / max_steps, (time.perf_counter() - t0) / budget_s))
        lr = config.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))
        for group in opt.param_groups:
            group["lr"] = lr
        pred = net(*_tensors(batch, device))
        loss = _masked_pinball(pred, target, q_t)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step > 1 else value
        if step % config.eval_every == 0 or step == max_steps:
            h_loss = holdout_loss()
            history.append((step, running, h_loss))
            if h_loss < best_loss:
                best_loss, best_step, best_state = h_loss, step, snapshot()
            if progress is not None:
                progress(step, running, h_loss)
    if not history:
        best_loss, best_step = holdout_loss(), step
        history.append((step, running, best_loss))
        best_state = snapshot()
    net.load_state_dict(best_state)
    return _Member(net, step, best_step, best_loss, history)


def train(
    series: Sequence[SeriesData],
    config: TrainConfig,
    *,
    progress: Callable[[int, float, float], None] | None = None,
) -> tuple[Forecaster, TrainReport]:
    """Train, pick the best checkpoint on the held-back tails, calibrate.

    Args:
        series: Training series (one global model across them).
        config: Training configuration.
        progress: Called after each held-back evaluation with (step, train loss,
            held-back loss).

    Returns:
        The calibrated forecaster and a report.

    Raises:
        ValueError: If no series is long enough (shorter ones are skipped with a warning).
    """
    if not series:
        raise ValueError("no series to train on")
    device = resolve_device(config.device)
    horizons = config.network.horizons
    splits = []
    for s in series:
        # A service with too little history is left out, not allowed to stop the others.
        try:
            splits.append(split_windows(s, config))
        except ValueError as exc:
            log.warning("not training on %s: %s", s.name, exc)
    if not splits:
        raise ValueError("no series is long enough to train on; give each more history")
    train_w = [t for t, _ in splits]
    hold_w = [h for _, h in splits]
    n_windows = sum(len(w) for w in train_w)
    max_steps = config.max_steps
    if config.epochs is not None:
        max_steps = max(1, math.ceil(config.epochs * n_windows / config.batch_size))
    # A fixed held-back sample (at most 512 windows per series) scores checkpoints.
    eval_sets = []
    for w in hold_w:
        idx = _strided(0, len(w), 512)
        inp = w.inputs(idx, horizons)
        eval_sets.append((inp, w.targets[idx] / inp.scale[:, None]))

    t0 = time.perf_counter()
    nets: list[HybridForecaster] = []
    members: list[_Member] = []
    for m in range(config.members):
        # Each member gets an equal share of what is left of the wall-clock budget.
        left = config.max_minutes * 60.0 - (time.perf_counter() - t0)
        member = _train_member(
            train_w,
            eval_sets,
            config,
            seed=config.seed + m,
            max_steps=max_steps,
            budget_s=max(left / (config.members - m), 1e-3),
            device=device,
            progress=progress,
        )
        nets.append(member.net)
        members.append(member)
    seconds = time.perf_counter() - t0
    forecaster = Forecaster(nets, None, device)
    forecaster.calibration = calibrate(forecaster, hold_w)
    report = TrainReport(
        steps=sum(m.steps for m in members),
        seconds=seconds,
        best_step=members[0].best_step,
        best_holdout_loss=float(np.mean([m.best_loss for m in members])),
        device=str(device),
        train_windows=n_windows,
        holdout_windows=sum(len(w) for w in hold_w),
        history=[h for m in members for h in m.history],
        member_best_steps=[m.best_step for m in members],
    )
    log.info(
        "trained %d member(s), %d steps in %.1f s on %s, best steps %s",
        len(members),
        report.steps,
        seconds,
        device,
        report.member_best_steps,
    )
    return forecaster, report


_FIELDS = ("hourly", "recent", "future", "static", "scale")
