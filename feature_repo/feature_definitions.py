"""Feast definitions of the auto-scaler's features. Declarative only: no I/O here.

The columns mirror ``features.engineering`` (MINUTE_FEATURES, SEQUENCE_FEATURES,
PROFILE_FEATURES); ``tests/integration/test_feature_pipeline.py`` fails if they drift apart.
Every feature row is stamped with ``event_timestamp`` = the end of the minute it describes
(when its data became available), so point-in-time joins never see later data.
"""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Bool, Float32, Int64, String

# The feature Parquet folder. The project's flows export AUTOSCALER_FEAST_DATA_DIR from their
# settings; the default is the default state folder as seen from this repo (the feast CLI
# resolves relative paths against the repo folder).
DATA_DIR = os.environ.get("AUTOSCALER_FEAST_DATA_DIR", "../.state/feast/data")

# One processing service (queue consumer or stream job) that gets scaled.
service = Entity(
    name="service",
    join_keys=["service_id"],
    value_type=ValueType.STRING,
    description="An event-processing service the auto-scaler sizes.",
)

# Scalar features of every observed minute, written by the features flow.
service_minute_source = FileSource(
    name="service_minute_source",
    path=f"{DATA_DIR}/service_minute",
    timestamp_field="event_timestamp",
    description="Engineered per-minute features (features.engineering.FeatureFrames.minute).",
)

# Fresh per-minute rows pushed straight to the online store between feature refreshes.
service_minute_push = PushSource(
    name="service_minute_push",
    batch_source=service_minute_source,
    description="Push entry point for fresh per-minute feature rows.",
)

# Array features the forecaster reads at serving time (last 2 h by minute, 7 days by hour).
service_sequences_source = FileSource(
    name="service_sequences_source",
    path=f"{DATA_DIR}/service_sequences",
    timestamp_field="event_timestamp",
    description="Sequence features (features.engineering.FeatureFrames.sequences).",
)

# Service profile as of each change (SLA, prices, limits).
service_profile_source = FileSource(
    name="service_profile_source",
    path=f"{DATA_DIR}/service_profile",
    timestamp_field="event_timestamp",
    description="Service profiles (features.engineering.FeatureFrames.profiles).",
)

# Scaling decisions as the inference cycle logs them; serving reads the newest one per service
# (the job target in force, when it last changed) from the online store.
service_decisions_source = FileSource(
    name="service_decisions_source",
    path=f"{DATA_DIR}/service_decisions",
    timestamp_field="event_timestamp",
    description="Scaling decisions (the offline copy lives in the scaling_decisions table).",
)

# Every decision is pushed here as it is made.
service_decisions_push = PushSource(
    name="service_decisions_push",
    batch_source=service_decisions_source,
    description="Push entry point of the inference cycle's decisions.",
)

# Every per-minute feature, in the order features.engineering.MINUTE_FEATURES gives them.
MINUTE_SCHEMA = [
    # traffic
    Field(name="events_in", dtype=Float32),
    Field(name="events_mean_5m", dtype=Float32),
    Field(name="events_std_5m", dtype=Float32),
    Field(name="events_max_5m", dtype=Float32),
    Field(name="events_mean_15m", dtype=Float32),
    Field(name="events_std_15m", dtype=Float32),
    Field(name="events_max_15m", dtype=Float32),
    Field(name="events_mean_1h", dtype=Float32),
    Field(name="events_std_1h", dtype=Float32),
    Field(name="events_max_1h", dtype=Float32),
    Field(name="events_mean_1d", dtype=Float32),
    Field(name="events_std_1d", dtype=Float32),
    Field(name="events_max_1d", dtype=Float32),
    Field(name="events_ewm_5", dtype=Float32),
    Field(name="events_ewm_15", dtype=Float32),
    Field(name="events_ewm_60", dtype=Float32),
    Field(name="events_ewm_1440", dtype=Float32),
    Field(name="events_lag_1m", dtype=Float32),
    Field(name="events_lag_5m", dtype=Float32),
    Field(name="events_lag_15m", dtype=Float32),
    Field(name="events_lag_1h", dtype=Float32),
    Field(name="events_lag_1d", dtype=Float32),
    Field(name="events_lag_1w", dtype=Float32),
    Field(name="events_slope_1h", dtype=Float32),
    Field(name="events_ratio_1h", dtype=Float32),
    # calendar
    Field(name="minute_of_day", dtype=Int64),
    Field(name="day_of_week", dtype=Int64),
    Field(name="month", dtype=Int64),
    Field(name="daily_sin_1", dtype=Float32),
    Field(name="daily_cos_1", dtype=Float32),
    Field(name="daily_sin_2", dtype=Float32),
    Field(name="daily_cos_2", dtype=Float32),
    Field(name="daily_sin_3", dtype=Float32),
    Field(name="daily_cos_3", dtype=Float32),
    Field(name="weekly_sin_1", dtype=Float32),
    Field(name="weekly_cos_1", dtype=Float32),
    Field(name="weekly_sin_2", dtype=Float32),
    Field(name="weekly_cos_2", dtype=Float32),
    Field(name="yearly_sin_1", dtype=Float32),
    Field(name="yearly_cos_1", dtype=Float32),
    Field(name="is_holiday", dtype=Bool),
    Field(name="in_business_event", dtype=Bool),
    Field(name="expected_traffic_multiplier", dtype=Float32),
    # anomaly
    Field(name="events_seasonal_median", dtype=Float32),
    Field(name="events_robust_z", dtype=Float32),
    Field(name="spike_flag", dtype=Bool),
    Field(name="level_shift_ratio", dtype=Float32),
    Field(name="level_shift_flag", dtype=Bool),
    # system
    Field(name="utilization", dtype=Float32),
    Field(name="jobs_running", dtype=Int64),
    Field(name="jobs_starting", dtype=Int64),
    Field(name="queue_length", dtype=Float32),
    Field(name="queue_wait_p95_s", dtype=Float32),
    Field(name="events_dropped", dtype=Float32),
    Field(name="error_rate", dtype=Float32),
    Field(name="drain_time_s", dtype=Float32),
    Field(name="headroom", dtype=Float32),
    Field(name="job_failure_rate_1h", dtype=Float32),
    # business
    Field(name="criticality", dtype=Int64),
    Field(name="sla_latency_s", dtype=Float32),
    Field(name="sla_target", dtype=Float32),
    Field(name="budget_used_today", dtype=Float32),
]

# The subset the scaling controller and its safety shield read (view service_control).
CONTROL_FEATURES = {
    "events_in",
    "events_mean_15m",
    "events_max_15m",
    "events_ewm_15",
    "events_slope_1h",
    "minute_of_day",
    "day_of_week",
    "is_holiday",
    "in_business_event",
    "expected_traffic_multiplier",
    "events_robust_z",
    "spike_flag",
    "level_shift_flag",
    "utilization",
    "jobs_running",
    "jobs_starting",
    "queue_length",
    "queue_wait_p95_s",
    "events_dropped",
    "error_rate",
    "drain_time_s",
    "headroom",
    "job_failure_rate_1h",
    "criticality",
    "sla_latency_s",
    "sla_target",
    "budget_used_today",
}

# Traffic, calendar, anomaly, system-state and business features of the newest minute.
# TTL 1 h: a point-in-time join does not reach further back for a minute's state.
service_minute = FeatureView(
    name="service_minute",
    entities=[service],
    ttl=timedelta(hours=1),
    schema=MINUTE_SCHEMA,
    source=service_minute_push,
    online=True,
    description="Per-minute traffic, calendar, anomaly, system and business features.",
)

# The controller's and the shield's subset of the per-minute features, as its own view: the
# SQLite and Redis online stores read every feature of a view per entity, so a narrow view
# keeps the every-minute read of all services short (bench/online_read.py).
service_control = FeatureView(
    name="service_control",
    entities=[service],
    ttl=timedelta(hours=1),
    schema=[f for f in MINUTE_SCHEMA if f.name in CONTROL_FEATURES],
    source=service_minute_push,
    online=True,
    description="Per-minute features the scaling controller and its safety shield read.",
)

# Sequence features for the forecaster's encoder.
service_sequences = FeatureView(
    name="service_sequences",
    entities=[service],
    ttl=timedelta(hours=1),
    schema=[
        Field(name="recent_events_120m", dtype=Array(Float32)),  # length 120
        Field(name="hourly_events_7d", dtype=Array(Float32)),  # length 168
    ],
    source=service_sequences_source,
    online=True,
    description="Last 120 one-minute and last 168 hourly event counts, oldest first.",
)

# Static covariates; profiles change rarely, so a profile stays valid for ten years.
service_profile = FeatureView(
    name="service_profile",
    entities=[service],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="criticality", dtype=Int64),
        Field(name="sla_latency_s", dtype=Float32),
        Field(name="sla_target", dtype=Float32),
        Field(name="cost_per_job_hour", dtype=Float32),
        Field(name="daily_budget", dtype=Float32),
        Field(name="min_jobs", dtype=Int64),
        Field(name="max_jobs", dtype=Int64),
        Field(name="max_step", dtype=Int64),
        Field(name="job_capacity_eps", dtype=Float32),
        Field(name="job_startup_s", dtype=Float32),
    ],
    source=service_profile_source,
    online=True,
    description="Service profile: SLA, prices, job limits and capacity.",
)

# The newest scaling decision of each service. TTL 1 day: a service not decided for a day
# starts again from the job count it reports.
service_decisions = FeatureView(
    name="service_decisions",
    entities=[service],
    ttl=timedelta(days=1),
    schema=[
        Field(name="decision_ts", dtype=Int64),  # minute decided for, seconds since the epoch
        Field(name="jobs_before", dtype=Int64),
        Field(name="jobs_after", dtype=Int64),
        Field(name="action", dtype=Int64),
        Field(name="last_change_ts", dtype=Int64),  # when the target last changed, epoch s
        Field(name="controller", dtype=String),
        Field(name="forecaster_version", dtype=String),
        Field(name="controller_version", dtype=String),
        Field(name="forecast_q10", dtype=Float32),
        Field(name="forecast_q50", dtype=Float32),
        Field(name="forecast_q90", dtype=Float32),
        Field(name="shield_reason", dtype=String),
    ],
    source=service_decisions_push,
    online=True,
    description="The newest scaling decision of each service.",
)

# The profile fields the controller needs beyond those already in service_control (criticality
# and the SLA come with it; Feast refuses a feature name twice in one feature service).
PROFILE_LIMITS = [
    "cost_per_job_hour",
    "daily_budget",
    "min_jobs",
    "max_jobs",
    "max_step",
    "job_capacity_eps",
    "job_startup_s",
]

# What the event forecaster reads: traffic history, calendar, anomaly signals, sequences and
# the static profile.
forecaster_v1 = FeatureService(
    name="forecaster_v1",
    features=[
        service_minute[
            [
                "events_in",
                "events_mean_5m",
                "events_std_5m",
                "events_max_5m",
                "events_mean_15m",
                "events_std_15m",
                "events_max_15m",
                "events_mean_1h",
                "events_std_1h",
                "events_max_1h",
                "events_mean_1d",
                "events_std_1d",
                "events_max_1d",
                "events_ewm_5",
                "events_ewm_15",
                "events_ewm_60",
                "events_ewm_1440",
                "events_lag_1m",
                "events_lag_5m",
                "events_lag_15m",
                "events_lag_1h",
                "events_lag_1d",
                "events_lag_1w",
                "events_slope_1h",
                "events_ratio_1h",
                "minute_of_day",
                "day_of_week",
                "month",
                "daily_sin_1",
                "daily_cos_1",
                "daily_sin_2",
                "daily_cos_2",
                "daily_sin_3",
                "daily_cos_3",
                "weekly_sin_1",
                "weekly_cos_1",
                "weekly_sin_2",
                "weekly_cos_2",
                "yearly_sin_1",
                "yearly_cos_1",
                "is_holiday",
                "in_business_event",
                "expected_traffic_multiplier",
                "events_seasonal_median",
                "events_robust_z",
                "spike_flag",
                "level_shift_ratio",
                "level_shift_flag",
            ]
        ],
        service_sequences,
        service_profile[["criticality", "job_capacity_eps", "job_startup_s"]],
    ],
    description="Features of the event forecaster, version 1.",
)

# What the scaling controller reads: system state, business context, recent traffic and
# the limits it must respect.
controller_v1 = FeatureService(
    name="controller_v1",
    features=[
        service_control,
        service_profile[PROFILE_LIMITS],
    ],
    description="Features of the scaling controller and its safety shield, version 1.",
)

# What one inference cycle reads in a single online call: the controller's state and limits,
# the forecaster's sequences, the full profile and the decision in force.
serving_v1 = FeatureService(
    name="serving_v1",
    features=[
        service_control,
        service_sequences,
        service_profile[PROFILE_LIMITS],
        service_decisions,
    ],
    description="Everything the decision engine reads per service, version 1.",
)
