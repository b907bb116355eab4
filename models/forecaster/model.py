"""The Transformer + LSTM hybrid network (Temporal-Fusion-Transformer-like).

Architecture, in the order data flows (d = ``hidden``):

1. **Static covariates** (scale, recent levels, criticality) go through a gated residual
   network (GRN) into a context vector ``c``. ``c`` initialises both LSTM encoders and
   conditions every decoder query, as TFT's static enrichment does.
2. **Multi-scale encoders** over the observed past: an LSTM over the last 48 clock hours
   (the daily cycle; an LSTM's cost grows step by step, so not over all 168), an LSTM
   over the last 120 minutes in five-minute steps (the current level and trend), and the
   week as seven 24-hour aggregates (the weekly cycle). Each step is first projected to d.
3. **Multi-head attention**: one query per horizon, built by a GRN from that horizon's
   known-future inputs (target time of day and week, calendar, same hour a day and a week
   before), the context and the last minute-encoder state, attends over the days, hours
   and minutes (type embeddings tell them apart). A GLU gate decides how much of the
   attention output is added to the query (TFT's gated skip), then a GRN.
4. **Quantile heads**: per horizon, the median plus softplus-positive steps above and
   below it, so the quantiles never cross by construction. Outputs are in units of the
   input scale (see :mod:`models.forecaster.windows`).

All horizons and quantiles come out of one forward pass (multi-task across horizons).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.forecaster.windows import (
    FUTURE_FEATURES,
    HORIZONS,
    HOURLY_FEATURES,
    QUANTILES,
    RECENT_FEATURES,
    STATIC_FEATURES,
)

LSTM_HOURS = 48
"""Hours of the week the hourly LSTM runs over (the last two days)."""


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of the network.

    Args:
        hidden: Width d of every layer.
        heads: Attention heads (must divide ``hidden``).
        dropout: Dropout inside GRNs and attention during training.
        horizons: Forecast horizons, minutes.
        quantiles: Quantile levels, ascending, including 0.5.
    """

    hidden: int = 32
    heads: int = 4
    dropout: float = 0.1
    horizons: tuple[int, ...] = HORIZONS
    quantiles: tuple[float, ...] = QUANTILES

    def __post_init__(self) -> None:
        if self.hidden < 4 or self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be >= 4 and divisible by heads")
        if list(self.quantiles) != sorted(set(self.quantiles)) or 0.5 not in self.quantiles:
            raise ValueError("quantiles must be strictly ascending and include 0.5")
        if not all(0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles must lie in (0, 1)")
        if not self.horizons or min(self.horizons) < 1:
            raise ValueError("horizons must be positive minutes")
        # Ascending, so per-horizon inputs (the calendar ahead) line up with the output
        # columns whatever order a caller lists them in.
        if list(self.horizons) != sorted(set(self.horizons)):
            raise ValueError(f"horizons must be strictly ascending, got {self.horizons}")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (tuples become lists)."""
        d = asdict(self)
        d["horizons"] = list(self.horizons)
        d["quantiles"] = list(self.quantiles)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> NetworkConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            hidden=int(data["hidden"]),  # type: ignore[call-overload]
            heads=int(data["heads"]),  # type: ignore[call-overload]
            dropout=float(data["dropout"]),  # type: ignore[arg-type]
            horizons=tuple(int(h) for h in data["horizons"]),  # type: ignore[attr-defined]
            quantiles=tuple(float(q) for q in data["quantiles"]),  # type: ignore[attr-defined]
        )


class GatedResidualNetwork(nn.Module):
    """TFT's GRN: ELU MLP with an optional context, GLU-gated, added to a skip, normalised."""

    def __init__(self, d_in: int, d: int, dropout: float, d_context: int = 0) -> None:
        super().__init__()
        self.skip = nn.Linear(d_in, d) if d_in != d else nn.Identity()
        self.fc1 = nn.Linear(d_in + d_context, d)
        self.fc2 = nn.Linear(d, d)
        self.gate = nn.Linear(d, 2 * d)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = x if context is None else torch.cat([x, context], dim=-1)
        h = self.fc2(nn.functional.elu(self.fc1(h)))
        h = nn.functional.glu(self.gate(self.drop(h)), dim=-1)
        return self.norm(self.skip(x) + h)


class HybridForecaster(nn.Module):
    """LSTM encoders + attention decoder with non-crossing quantile heads."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        d = config.hidden
        self.config = config
        n_q = len(config.quantiles)
        self.median_index = config.quantiles.index(0.5)
        self.static_grn = GatedResidualNetwork(STATIC_FEATURES, d, config.dropout)
        self.init_h = nn.Linear(d, d)
        self.init_c = nn.Linear(d, d)
        self.hourly_in = nn.Linear(HOURLY_FEATURES, d)
        self.recent_in = nn.Linear(RECENT_FEATURES, d)
        self.daily_in = nn.Linear(HOURLY_FEATURES, d)
        self.hourly_lstm = nn.LSTM(d, d, batch_first=True)
        self.recent_lstm = nn.LSTM(d, d, batch_first=True)
        self.type_embedding = nn.Parameter(torch.zeros(3, d))
        self.enc_norm = nn.LayerNorm(d)
        self.query_grn = GatedResidualNetwork(FUTURE_FEATURES, d, config.dropout, d_context=2 * d)
        self.attention = nn.MultiheadAttention(
            d, config.heads, dropout=config.dropout, batch_first=True
        )
        self.attn_gate = nn.Linear(d, 2 * d)
        self.attn_norm = nn.LayerNorm(d)
        self.out_grn = GatedResidualNetwork(d, d, config.dropout, d_context=d)
        self.head = nn.Linear(d, n_q)

    def forward(
        self,
        hourly: torch.Tensor,
        recent: torch.Tensor,
        future: torch.Tensor,
        static: torch.Tensor,
    ) -> torch.Tensor:
        """Quantiles per horizon in units of the input scale.

        Args:
            hourly: (B, 168, HOURLY_FEATURES).
            recent: (B, 24, RECENT_FEATURES).
            future: (B, H, FUTURE_FEATURES).
            static: (B, STATIC_FEATURES).

        Returns:
            (B, H, Q), ascending along the last axis.
        """
        ctx = self.static_grn(static)
        state = (
            torch.tanh(self.init_h(ctx)).unsqueeze(0).contiguous(),
            torch.tanh(self.init_c(ctx)).unsqueeze(0).contiguous(),
        )
        emb_h = self.hourly_in(hourly)
        # The LSTM reads the last LSTM_HOURS hours: its cost grows with the length, one
        # step at a time. The whole week reaches attention as daily aggregates, and the
        # same hour a day and a week before the target comes in through the queries.
        enc_h, _ = self.hourly_lstm(emb_h[:, -LSTM_HOURS:], state)
        enc_r, (last_r, _) = self.recent_lstm(self.recent_in(recent), state)
        # Daily aggregates: the week as seven 24-hour blocks (means of the hour features).
        days = self.daily_in(hourly.reshape(hourly.shape[0], 7, 24, -1).mean(dim=2))
        memory = torch.cat(
            [
                days + self.type_embedding[0],
                enc_h + self.type_embedding[1],
                enc_r + self.type_embedding[2],
            ],
            dim=1,
        )
        memory = self.enc_norm(memory)
        n_h = future.shape[1]
        q_ctx = torch.cat([ctx, last_r[0]], dim=-1).unsqueeze(1).expand(-1, n_h, -1)
        query = self.query_grn(future, q_ctx)
        attended, _ = self.attention(query, memory, memory, need_weights=False)
        z = self.attn_norm(query + nn.functional.glu(self.attn_gate(attended), dim=-1))
        z = self.out_grn(z, ctx.unsqueeze(1).expand(-1, n_h, -1))
        raw = self.head(z)
        return _monotone(raw, self.median_index)


def _monotone(raw: torch.Tensor, median_index: int) -> torch.Tensor:
    """Median plus cumulative positive steps outwards: quantiles that cannot cross."""
    median = raw[..., median_index : median_index + 1]
    steps = nn.functional.softplus(raw)
    up = torch.cumsum(steps[..., median_index + 1 :], dim=-1)
    below = steps[..., :median_index].flip(-1)
    down = torch.cumsum(below, dim=-1).flip(-1)
    return torch.cat([median - down, median, median + up], dim=-1)

