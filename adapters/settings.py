"""The one settings class of loradock.

Every knob is read here, from `LORADOCK_*` environment variables (or a `.env` file), and nowhere else: the app
factory and the CLI build one `Settings` and pass it down, so tests can hand in their own.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
SUPPORTED_LORA_RANKS = frozenset({1, 8, 16, 32, 64, 128, 256, 320, 512})
VLLM_MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"
"""vLLM's environment switch: "0" lets its CPU platform keep a single worker inside the engine-core process (and
runs `vllm.LLM`'s engine core in the caller). `AsyncLLM` starts its engine core as a process of its own whatever it
says. Kept here so the server and training, which never import each other, name it once."""


class Settings(BaseSettings):
    """Configuration for the hub, the server and training; each field is also `LORADOCK_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="LORADOCK_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path("~/.loradock"),
        description="Where loradock keeps models, adapters, runs and its database.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the hub's database; unset: SQLite in $LORADOCK_HOME. PostgreSQL for replicas.",
    )

    # --- the base model and the engine ------------------------------------------------------------------
    base_model: str = Field(
        default=DEMO_MODEL_NAME,
        description="A local folder, the name of a model under $LORADOCK_HOME/models, or a Hugging Face id.",
    )
    served_model_name: str | None = Field(
        default=None, description="Name clients use for the base model; defaults to the model's folder name."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int = Field(default=2048, ge=16, description="Context length (prompt + completion) in tokens.")
    max_loras: int = Field(default=4, ge=1, description="Adapters active in one batch.")
    max_cpu_loras: int = Field(default=32, ge=1, description="Adapters kept loaded in host memory (LRU).")
    max_lora_rank: int = Field(default=64, ge=1, description="Largest LoRA rank the engine accepts.")
    kv_cache_gib: float | None = Field(
        default=None,
        gt=0,
        description="KV-cache size in GiB; unset lets vLLM size it from gpu_memory_utilization (1 GiB on the CPU).",
    )
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    cpu_pinned_worker: bool = Field(
        default=False,
        description="On vLLM's CPU build, run the model in a worker process pinned to all cores but one, which is kept "
        "for the engine loop (vLLM's own layout), instead of inside the engine-core process on every core.",
    )
    enforce_eager: bool = Field(default=False, description="Skip CUDA graph capture (faster start, slower decode).")
    seed: int = 0
    remote_engines: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URLs of vLLM OpenAI servers to front instead of running vLLM in this process (comma-separated "
        "or a JSON list); they must see the artifact store at the same path (README: Remote engines).",
    )
    remote_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest wait for a remote engine's answer, or for its next streamed token."
    )
    remote_start_timeout_s: float = Field(
        default=600.0, gt=0, description="How long the server waits at start for every remote engine to answer."
    )
    remote_api_key: SecretStr | None = Field(
        default=None, description="The key the remote engines were started with (vLLM's --api-key), if any."
    )

    # --- the HTTP server --------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_concurrent_requests: int = Field(
        default=256, ge=1, description="Requests in flight before new ones get 503 server_overloaded."
    )
    max_n: int = Field(default=16, ge=1, description="Largest `n` (choices per request) accepted.")
    max_request_bytes: int = Field(
        default=8 << 20, ge=1024, description="Largest JSON request body (uploads have their own limits below)."
    )
    max_prompt_tokens: int | None = Field(
        default=None, ge=1, description="Most prompt tokens one request may send; unset: the context length."
    )
    max_output_tokens: int | None = Field(
        default=None, ge=1, description="Largest max_tokens accepted (and the default); unset: what the context holds."
    )
    key_requests_per_minute: int | None = Field(
        default=None, ge=1, description="Requests per minute per API key, unless the key sets its own; unset: none."
    )
    key_max_concurrent: int | None = Field(
        default=64, ge=1, description="Generations in flight per API key, unless the key sets its own; unset: none."
    )
    graceful_shutdown_s: float = Field(default=30.0, ge=0, description="How long SIGTERM waits for streams.")
    resolution_cache_s: float = Field(
        default=2.0, ge=0, description="How long a resolved adapter name is reused before the registry is asked again."
    )

    # --- auth ---------------------------------------------------------------------------------------------
    auth: Literal["auto", "on", "off"] = Field(
        default="auto", description="API keys: auto = required unless the server binds a loopback address only."
    )
    admin_key: SecretStr | None = Field(
        default=None, description="A bootstrap admin key (e.g. from a secret), valid beside the keys in the database."
    )

    # --- adapter limits -----------------------------------------------------------------------------------
    max_adapter_bytes: int = Field(default=2 << 30, ge=1, description="Largest adapter (unpacked) accepted.")
    max_adapter_files: int = Field(default=32, ge=1, description="Most files one adapter may hold.")
    max_file_bytes: int = Field(default=512 << 20, ge=1, description="Largest dataset file /v1/files accepts.")

    # --- fine-tuning worker -------------------------------------------------------------------------------
    worker_poll_s: float = Field(default=2.0, gt=0, description="How often an idle worker looks for jobs.")
    worker_stale_s: float = Field(
        default=60.0, gt=0, description="A running job whose worker is silent this long is resumed by another."
    )
    worker_max_attempts: int = Field(default=3, ge=1, description="Worker losses a job survives before it fails.")

    # --- interaction log and feedback ---------------------------------------------------------------------
    log_interactions: bool = Field(default=True, description="Record completions for feedback and retraining.")
    log_sample_rate: float = Field(
        default=1.0, ge=0, le=1, description="Share of completions logged where an adapter has no policy of its own."
    )
    log_retention_days: float = Field(
        default=30.0, gt=0, description="Days interactions are kept where an adapter has no policy of its own."
    )
    log_redact: bool = Field(default=True, description="Replace e-mail addresses, phone and card numbers in logs.")
    log_redact_patterns: dict[str, str] = Field(
        default_factory=dict,
        description='More redaction patterns as JSON, name -> regex: {"ticket": "TCK-\\d+"} logs [TICKET].',
    )
    log_queue_size: int = Field(
        default=10_000, ge=1, description="Interactions waiting to be written; beyond this they are dropped, counted."
    )
    log_write_timeout_s: float = Field(
        default=5.0, gt=0, description="How long one write of the log may wait for a locked database before dropping."
    )
    log_sweep_s: float = Field(default=3600.0, gt=0, description="How often expired interactions are deleted.")
    shadow_max_in_flight: int = Field(
        default=8, ge=1, description="Shadow requests (a candidate answering copies of live traffic) run at once."
    )

    # --- drift ---------------------------------------------------------------------------------------------
    drift: bool = Field(default=True, description="Watch each adapter version's traffic for drift from its profile.")
    drift_window: int = Field(default=200, ge=20, description="Completions in the count window.")
    drift_window_s: float = Field(default=3600.0, gt=0, description="Seconds the time window spans.")
    drift_evaluate_every: int = Field(
        default=50, ge=1, description="New completions of a version between two evaluations of its windows."
    )
    drift_evaluate_s: float = Field(
        default=30.0, gt=0, description="A version with new completions is evaluated at least this often."
    )
    drift_profile_requests: int = Field(
        default=200, ge=20, description="Production prompts a version with no profile is profiled from."
    )
    drift_embed_per_s: float = Field(
        default=50.0, gt=0, description="Prompts embedded per second at most (the rest count for length and tokens)."
    )
    drift_batch_s: float = Field(
        default=10.0,
        ge=0,
        description="Longest a completion waits, while requests are in flight, for the drift thread to take it in a "
        "batch (0: at once). Drift's work done at once slowed the next request's first token.",
    )
    drift_queue_size: int = Field(default=10_000, ge=1, description="Completions waiting for the drift thread.")
    drift_snapshot_s: float = Field(
        default=300.0, ge=0, description="Least time between two stored snapshots of a window whose status holds."
    )
    drift_history_days: float = Field(default=30.0, gt=0, description="Days drift snapshots are kept.")
    dashboard_sample_s: float = Field(
        default=10.0, gt=0, description="How often the dashboard's traffic history samples the metrics."
    )

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("log_redact_patterns")
    @classmethod
    def _check_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"log_redact_patterns[{name!r}] is not a valid regular expression: {exc}") from exc
        return value

    @field_validator("max_lora_rank")
    @classmethod
    def _check_rank(cls, value: int) -> int:
        if value not in SUPPORTED_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank must be one of {sorted(SUPPORTED_LORA_RANKS)} (vLLM's kernels), got {value}"
            )
        return value

    @field_validator("remote_engines", mode="before")
    @classmethod
    def _split_remote_engines(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else text.split(",")
        return value

    @field_validator("remote_engines")
    @classmethod
    def _check_remote_engines(cls, value: list[str]) -> list[str]:
        urls: list[str] = []
        for given in value:
            url = given.strip().rstrip("/").removesuffix("/v1")
            if not url:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"remote_engines: {given!r} is not an http(s) URL such as http://gpu-1:8000")
            if url in urls:
                raise ValueError(f"remote_engines: {given!r} is listed twice")
            urls.append(url)
        return urls

    @model_validator(mode="after")
    def _check_lora_capacity(self) -> Settings:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras ({self.max_loras}): "
                "every adapter in a batch also has to be held in host memory"
            )
        return self

    @model_validator(mode="after")
    def _refuse_open_public_server(self) -> Settings:
        if self.auth == "off" and not self.binds_loopback_only:
            raise ValueError(
                f"auth cannot be off when the server binds {self.host!r}: anyone on the network could use it. "
                "Bind 127.0.0.1 or set LORADOCK_AUTH=on (or auto) and create keys with `loradock keys create`."
            )
        return self

    @property
    def models_dir(self) -> Path:
        """Base models fetched or converted by loradock."""
        return self.home / "models"

    @property
    def artifacts_dir(self) -> Path:
        """The content-addressed artifact store (adapters and exports)."""
        return self.home / "artifacts"

    @property
    def files_dir(self) -> Path:
        """Uploaded dataset files (/v1/files)."""
        return self.home / "files"

    @property
    def cache_dir(self) -> Path:
        """Results worth keeping between runs: export teachers' measurements (`teachers/`) and evaluation
        answers (`answers/`), each keyed by the content that produced it."""
        return self.home / "cache"

    @property
    def jobs_dir(self) -> Path:
        """Run folders of fine-tuning jobs."""
        return self.home / "jobs"

    @property
    def database(self) -> str:
        """The effective database URL."""
        return self.database_url or f"sqlite:///{self.home / 'loradock.db'}"

    @property
    def binds_loopback_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def auth_required(self) -> bool:
        return self.auth == "on" or (self.auth == "auto" and not self.binds_loopback_only)
