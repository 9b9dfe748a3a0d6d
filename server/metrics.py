"""Prometheus metrics of one server, in a registry of its own (so that several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)


class ServerMetrics:
    """Request, latency, token and error metrics, labelled by the model name a response reports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loradock_requests",
            "Generation requests by model, route and outcome (ok, error, aborted).",
            ["model", "route", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "loradock_request_latency_seconds",
            "Time from a request's admission to its last token.",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "loradock_time_to_first_token_seconds",
            "Time from a request's admission to its first generated token.",
            ["model", "route"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "loradock_prompt_tokens", "Prompt tokens processed.", ["model"], registry=self.registry
        )
        self.completion_tokens = Counter(
            "loradock_completion_tokens", "Completion tokens generated.", ["model"], registry=self.registry
        )
        self.errors = Counter(
            "loradock_errors",
            'Error responses by model ("none" before a model was resolved), HTTP status and error code.',
            ["model", "status", "code"],
            registry=self.registry,
        )
        self.adapter_cache = Counter(
            "loradock_adapter_cache",
            "Adapter lookups by result: hit (already in the engine) or miss (loaded for this request).",
            ["result"],
            registry=self.registry,
        )
        self.adapter_load_seconds = Histogram(
            "loradock_adapter_load_seconds",
            "Time to load an adapter into the engine.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.adapters_resident = Gauge(
            "loradock_adapters_resident", "Adapters held in the engine's host-memory cache.", registry=self.registry
        )
        self.in_flight = Gauge(
            "loradock_requests_in_flight",
            "Generation requests admitted and not yet finished.",
            registry=self.registry,
        )
        self.interactions_logged = Counter(
            "loradock_interactions_logged",
            'Completions written to the interaction log, by adapter ("(base)" for the base model).',
            ["adapter"],
            registry=self.registry,
        )
        self.interactions_skipped = Counter(
            "loradock_interactions_skipped",
            "Completions not logged on purpose: opted_out (header) or sampled_out (the adapter's sampling rate).",
            ["reason"],
            registry=self.registry,
        )
        self.interactions_dropped = Counter(
            "loradock_interactions_dropped",
            "Completions that should have been logged but were not: queue_full or database_error.",
            ["reason"],
            registry=self.registry,
        )
        self.interaction_queue = Gauge(
            "loradock_interaction_log_queue", "Interactions waiting to be written.", registry=self.registry
        )
        self.redactions = Counter(
            "loradock_redactions",
            "Spans (e-mail, phone, card, custom) replaced in logged interactions.",
            registry=self.registry,
        )
        self.feedback = Counter(
            "loradock_feedback",
            "Feedback records posted, by adapter, rating (up/down) and whether they carry a correction.",
            ["adapter", "rating", "corrected"],
            registry=self.registry,
        )
        self.shadow_requests = Counter(
            "loradock_shadow_requests",
            "Copies of live requests answered by a shadow candidate, by adapter and outcome (ok, error, skipped).",
            ["adapter", "outcome"],
            registry=self.registry,
        )
        self.drift_observations = Counter(
            "loradock_drift_observations",
            "Completions handed to the drift monitor: accepted (in the windows) or dropped (its queue was full).",
            ["outcome"],
            registry=self.registry,
        )
        self.drift_status = Gauge(
            "loradock_drift_status",
            "Drift status per adapter version and window: -1 insufficient data, 0 ok, 1 warn, 2 alert.",
            ["adapter", "version", "window"],
            registry=self.registry,
        )
        self.drift_score = Gauge(
            "loradock_drift_score",
            "The latest score of each drift test (see GET /v1/adapters/{name}/drift for its thresholds).",
            ["adapter", "version", "window", "test"],
            registry=self.registry,
        )
        self.drift_window = Gauge(
            "loradock_drift_window_completions",
            "Completions in each drift window at its latest evaluation.",
            ["adapter", "version", "window"],
            registry=self.registry,
        )
        self.drift_evaluation_seconds = Histogram(
            "loradock_drift_evaluation_seconds",
            "Time to evaluate the windows of one adapter version (in the drift thread, not in requests).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
