"""Every operator knob, read once from ``FIREBOX_*`` environment variables.

One class so that a reader finds every setting in one place, and so that
tests build an app from an explicit ``Settings`` object instead of patching
the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from firebox import key_strength


class Settings(BaseSettings):
    """Configuration of one Firebox process (gateway replica)."""

    model_config = SettingsConfigDict(env_prefix="FIREBOX_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path(".firebox")
    models_dir: Path = Field(
        default=Path(__file__).resolve().parents[2] / "models",
        description="Folder that relative local-engine paths in the catalog refer to; "
        "defaults to the repository's models/ (the bundled demo models).",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset means a SQLite file in the data dir. "
        "postgresql://, postgresql+psycopg:// and postgresql+asyncpg:// are accepted.",
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="PostgreSQL connections one process keeps open. Replicas x (pool size + "
        "max overflow) must stay under the server's max_connections.",
    )
    database_max_overflow: int = Field(
        default=20, ge=0, le=1000, description="Connections opened beyond the pool at peaks."
    )
    database_pool_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="How long a request waits for a free connection before a 503.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for shared counters; unset means in-process."
    )
    allow_weak_admin_key: bool = Field(
        default=False,
        description="Development only: accept a FIREBOX_ADMIN_KEY shorter than 32 characters "
        "or under 128 estimated bits, and only while FIREBOX_HOST is a loopback address.",
    )
    admin_key: str | None = Field(
        default=None,
        description="Operator key to register at start; generated when unset. At least 32 "
        "characters and 128 bits of estimated entropy (firebox/key_strength.py).",
    )
    bootstrap_demo: bool = Field(
        default=True, description="Create the `demo` account, user and key on first start."
    )
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long a client has, from connecting (or from the first byte of a "
        "later request), to send a request's headers; then 408 and close.",
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a client has, after the headers, to send the whole body; "
        "then 408 and close.",
    )
    max_connections_per_client: int = Field(
        default=256,
        ge=0,
        description="Open connections one peer address may hold per process; more are "
        "answered 429 and closed. 0: no cap. Behind a proxy every client is the proxy.",
    )
    max_prompt_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Bytes of prompt text (messages as JSON, prompts, embedding inputs) one "
        "request may send; more is a 400 before any tokenizing. The default holds a "
        "1M-token context of English text (about 4 bytes a token).",
    )
    tokenizer_threads: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Threads that tokenize and template large prompts, off the event loop.",
    )
    tokenizer_account_share: int = Field(
        default=2,
        ge=1,
        description="Of those threads, how many one account may hold at once; its further "
        "large prompts wait (up to FIREBOX_TOKENIZER_ACCOUNT_QUEUE of them, then 429).",
    )
    tokenizer_account_queue: int = Field(default=16, ge=0)
    keep_alive_timeout_s: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="How long an idle client connection stays open. Longer than the idle "
        "expiry of common clients (httpx 5 s, aiohttp 15 s) and load balancers (60 s), so "
        "the gateway never closes a connection just as a client reuses it.",
    )
    key_cache_ttl_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a resolved API key is trusted from memory. Revocations are "
        "broadcast at once; the TTL only bounds staleness if a broadcast is missed.",
    )
    catalog_file: Path | None = Field(
        default=None,
        description="TOML file of models to register in the platform account at start "
        "(docs/api.md, Models); its entries override the bundled catalog.",
    )
    deployment_shapes_file: Path | None = Field(
        default=None,
        description="TOML file of deployment shapes to register in the platform account at "
        "start (docs/api.md, Deployment shapes); its entries override the bundled ones.",
    )
    deployment_min_scale_to_zero_s: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="The shortest autoscalingPolicy.scaleToZeroWindow a deployment may ask "
        "for (Fireworks: 5 min); tests lower it to seconds.",
    )
    deployment_retention_s: float = Field(
        default=7 * 86400.0,
        ge=0,
        description="How long a deleted deployment can be undeleted before it is purged.",
    )
    catalog_refresh_s: float = Field(
        default=5.0,
        ge=0,
        description="How stale a replica's in-memory model index may get before it reloads "
        "in the background; writes on the same replica apply at once.",
    )
    warm_local_engines: bool = Field(
        default=True, description="Load in-process models in the background at start."
    )
    access_log: bool = True
    log_level: str = "INFO"
    environment: Literal["development", "production"] = Field(
        default="development",
        description="`production` refuses settings meant only for trying things out "
        "(the test clock, the test payment provider).",
    )
    test_clock: bool = Field(
        default=False,
        description="Let the operator move the platform clock forward "
        "(POST /v1/admin/testClock:advance) to try month ends, invoices and tiers.",
    )
    payment_provider: Literal["test", "stripe"] = Field(
        default="test",
        description="`test` behaves like Stripe test cards (pm_card_visa, "
        "pm_card_chargeDeclined); `stripe` charges real cards with FIREBOX_STRIPE_API_KEY.",
    )
    stripe_api_key: str | None = None
    price_book_file: Path | None = Field(
        default=None, description="A price book TOML replacing the bundled one (SPEC §2 prices)."
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Where usage records are written ahead of the ledger; "
        "defaults to <data dir>/spool. Keep it on local disk, one per host.",
    )
    inflight_journal_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="How often each stream's delivered token counts are journaled in the "
        "spool dir; a killed process leaves at most this much generation per stream unbilled.",
    )
    ledger_batch_size: int = Field(default=5000, ge=1, le=100_000)
    ledger_max_delay_s: float = Field(default=0.02, gt=0, le=5)
    period_close_interval_s: float = Field(
        default=30.0, gt=0, description="How often a replica checks for a month to close."
    )
    period_close_grace_s: int = Field(
        default=3600,
        ge=0,
        description="How long after a month ends its invoices wait, so usage still in "
        "replicas' queues or spools reaches the ledger first.",
    )
    enforcement: bool = Field(
        default=True,
        description="Rate limits, spend limits and suspension on inference; off only "
        "for benchmarks and engines with no billing.",
    )
    default_max_completion_tokens: int = Field(
        default=2048,
        ge=1,
        le=10_000_000,
        description="How many tokens a chat or completions choice may generate when the "
        "request sets no max_tokens (never past the model's context); admission reserves "
        "money for that many.",
    )
    spend_wait_s: float = Field(
        default=2.0,
        ge=0,
        le=30,
        description="How long a request refused only because other requests' spend "
        "reservations fill the account's cap waits for room before its 429 spend_reserved.",
    )
    finetune_max_jobs: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Fine-tuning jobs one server process trains at once (one worker process "
        "each); 0 trains none on this replica.",
    )
    finetune_threads: int = Field(
        default=1, ge=1, le=256, description="torch threads of each training worker."
    )
    finetune_device: str = Field(
        default="auto",
        max_length=32,
        description='Where workers train: "auto" (CUDA when present, else the CPU), "cpu", '
        '"cuda" or "cuda:N".',
    )
    finetune_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness added to training workers, so serving on the same CPUs goes "
        "first; 0 leaves them at the server's priority.",
    )
    finetune_lease_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long a runner's claim on a job lasts without renewal; a job whose "
        "server died is taken over by another one this long after.",
    )
    finetune_poll_s: float = Field(
        default=1.0, gt=0, le=60, description="How often the job runner looks at the jobs."
    )
    storage_dir: Path | None = Field(
        default=None,
        description="Where uploaded files (datasets, model weights) are kept; defaults to "
        "<data_dir>/blobs.",
    )
    blob_store: Literal["local", "s3"] = Field(
        default="local",
        description="Where uploaded files live: 'local' (storage_dir) or 's3' (an "
        "S3-compatible bucket, FIREBOX_S3_*; needs the s3 extra).",
    )
    s3_bucket: str | None = Field(default=None, max_length=63)
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, Ceph); unset: AWS."
    )
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_prefix: str = Field(default="", description="Key prefix of Firebox's objects.")
    url_signing_key: SecretStr | None = Field(
        default=None,
        description="Key that signs upload/download URLs; generated once into the data dir "
        "when unset. Gateway replicas that share storage must share it.",
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="Base URL clients reach this gateway at, used in signed URLs (e.g. "
        "https://firebox.example.com); defaults to the request's own base URL.",
    )
    tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (chain) to serve HTTPS with; with tls_keyfile. Signed "
        "URLs are https when clients reach the gateway over TLS (the SDK's upload helper "
        "requires it).",
    )
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of tls_certfile.")
    signed_url_ttl_s: int = Field(
        default=3600, ge=60, le=7 * 24 * 3600, description="How long a signed URL is valid."
    )
    dataset_max_bytes: int = Field(
        default=1024**3,
        ge=1,
        description="Largest dataset (all its files together) an account may upload.",
    )
    dataset_storage_quota_bytes: int = Field(
        default=10 * 1024**3,
        ge=0,
        description="Bytes of datasets one account may keep (uploaded and promised by "
        "signed upload URLs).",
    )
    dataset_direct_upload_bytes: int = Field(
        default=150 * 1024**2,
        ge=1,
        description="Largest file a dataset's :upload takes; larger files go through "
        ":getUploadEndpoint's signed URLs.",
    )
    dataset_max_problems: int = Field(
        default=100, ge=1, le=10_000, description="Problems a dataset validation lists."
    )
    dataset_tokenizer: Path | None = Field(
        default=None,
        description="Model folder (tokenizer.json + chat template) datasets are counted "
        "with; defaults to <models_dir>/firebox-tiny.",
    )
    dataset_max_example_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Longest example a dataset may hold; defaults to the context length "
        "of the dataset tokenizer's model.",
    )
    min_upload_bytes_per_s: int = Field(
        default=256 * 1024,
        ge=1024,
        description="Slowest upload rate the body deadline allows: a request body may take "
        "FIREBOX_BODY_TIMEOUT_S plus its declared length at this rate.",
    )
    model_upload_max_file_bytes: int = Field(
        default=50 * 1024**3,
        ge=1,
        description="Largest single file of a model upload (adapter or base-model weights).",
    )
    model_upload_max_files: int = Field(
        default=256, ge=1, le=10_000, description="Most files one model upload may register."
    )
    account_storage_quota_bytes: int = Field(
        default=200 * 1024**3,
        ge=0,
        description="Storage each account may fill with uploaded model files, all models "
        "together (declared sizes count from the moment upload URLs are handed out).",
    )
    lora_max_rank: int = Field(
        default=64, ge=1, le=1024, description="Largest LoRA rank an uploaded add-on may have."
    )
    replicas: int = Field(
        default=1,
        ge=1,
        description="How many gateway replicas share the limits; without Redis each "
        "replica enforces 1/replicas of an account's rate limit.",
    )
    batch_concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Batch inference requests one replica runs at once (all jobs together).",
    )
    batch_max_jobs: int = Field(
        default=2, ge=1, le=64, description="Batch inference jobs one replica runs at once."
    )
    batch_yield: bool = Field(
        default=True,
        description="Batch inference yields to interactive requests: its lines start only in "
        "a lull, and the in-process engine pauses them while an interactive request runs "
        "(false only to measure what that saves).",
    )
    batch_lull_max_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a batch request waits for interactive requests to finish "
        "before it runs beside them (one at a time), so a batch job never starves.",
    )
    batch_poll_s: float = Field(
        default=2.0, gt=0, description="How often a replica looks for batch jobs to run."
    )
    batch_lease_s: float = Field(
        default=60.0,
        ge=5,
        description="A running batch job left this long without a heartbeat (its replica "
        "died) is taken over by another replica, which continues where it stopped.",
    )
    batch_file_max_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1024,
        description="Largest file POST /v1/files accepts (OpenAI's batch input limit).",
    )

    deployment_controller: bool = Field(
        default=True,
        description="Run the deployments controller (replicas, autoscaling, GPU metering) in "
        "this process; off serves the deployments API only.",
    )
    deployment_capacity: str = Field(
        default="NVIDIA_A100_80GB=8,NVIDIA_H100_80GB=8",
        description="Virtual accelerators of the local deployment driver, TYPE=COUNT by comma: "
        "replicas are placed only while their type has room (quota-checked and billed "
        "like real ones).",
    )
    deployment_reconcile_interval_s: float = Field(
        default=2.0, gt=0, le=300, description="How often deployments are reconciled."
    )
    deployment_meter_interval_s: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="GPU time is written to the ledger per this many seconds (divides an hour).",
    )
    deployment_tick_s: float = Field(
        default=0.5, gt=0, le=60, description="The local driver's autoscaling tick."
    )
    deployment_queue_limit: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Requests that may wait for a replica of one deployment (a cold start); "
        "more get a 503 with Retry-After.",
    )
    deployment_wake_timeout_s: float = Field(
        default=300.0, gt=0, le=3600, description="How long a request waits for a cold start."
    )
    deployment_kv_cache_tokens: int = Field(
        default=16_384, ge=256, description="KV cache of one local replica, in tokens."
    )
    deployment_replica_threads: int | None = Field(
        default=None, ge=1, description="Torch CPU threads of one local replica (default: torch's)."
    )
    deployment_driver: Literal["local", "ray_serve"] = Field(
        default="local",
        description="What runs deployment replicas: the embedded local driver (one node), or "
        "Ray Serve on a Ray cluster (FIREBOX_RAY_*; docs/operations.md).",
    )
    ray_dashboard_url: str = Field(
        default="http://127.0.0.1:8265",
        description="The Ray head's dashboard (Serve REST API) the Ray Serve driver applies to.",
    )
    ray_token: str | None = Field(
        default=None,
        description="Ray's authentication token (RAY_AUTH_MODE=token, Ray 2.60's default).",
    )
    ray_serve_url: str | None = Field(
        default=None,
        description="Where the gateway reaches the Serve proxy; default: the dashboard's host "
        "at FIREBOX_RAY_SERVE_PORT.",
    )
    ray_serve_host: str = Field(
        default="0.0.0.0", description="Where the Serve proxy listens on the Ray nodes."
    )
    ray_serve_port: int = Field(
        default=8001, ge=1, le=65535, description="The Serve proxy's port on the Ray nodes."
    )
    ray_proxy_location: Literal["HeadOnly", "EveryNode"] = Field(
        default="HeadOnly", description="Serve proxies on the head node only, or on every node."
    )
    ray_engine: Literal["firebox", "vllm"] = Field(
        default="firebox",
        description="What a Ray replica runs: Firebox's local engine, or vLLM (installed on "
        "the GPU nodes).",
    )
    ray_models_dir: str | None = Field(
        default=None,
        description="The models folder as the Ray nodes see it; default: FIREBOX_MODELS_DIR.",
    )
    ray_accelerators: str = Field(
        default="",
        description="Ray accelerator_type names of accelerator types, TYPE=RAYNAME by comma "
        "(e.g. NVIDIA_A100_80GB=A100-80G); the built-in table covers the usual ones.",
    )
    ray_max_ongoing_requests: int = Field(
        default=16, ge=1, le=100_000, description="Requests one Ray replica runs at once."
    )

    @model_validator(mode="after")
    def _production_refuses_test_tools(self) -> Settings:
        if self.environment == "production":
            if self.test_clock:
                raise ValueError("FIREBOX_TEST_CLOCK cannot be enabled in production")
            if self.allow_weak_admin_key:
                raise ValueError("FIREBOX_ALLOW_WEAK_ADMIN_KEY cannot be enabled in production")
            if self.payment_provider == "test":
                raise ValueError(
                    "production needs a real payment provider: set FIREBOX_PAYMENT_PROVIDER="
                    "stripe and FIREBOX_STRIPE_API_KEY"
                )
        if self.payment_provider == "stripe" and not self.stripe_api_key:
            raise ValueError("FIREBOX_PAYMENT_PROVIDER=stripe needs FIREBOX_STRIPE_API_KEY")
        return self

    def resolved_spool_dir(self) -> Path:
        """Where this replica writes usage ahead of the ledger."""
        return self.spool_dir or (self.data_dir / "spool")

    @field_validator("admin_key")
    @classmethod
    def _strong_admin_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None  # FIREBOX_ADMIN_KEY= (empty) means unset: Firebox generates one
        problem = key_strength.weakness(value)
        if problem is None:
            return value
        allowed = info.data.get("allow_weak_admin_key", False)
        if allowed and key_strength.is_loopback(str(info.data.get("host", ""))):
            return value
        if allowed:
            problem += " (FIREBOX_ALLOW_WEAK_ADMIN_KEY is set, but the host is not loopback)"
        raise ValueError(problem)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    def resolved_database_url(self) -> str:
        """The database URL to connect to, defaulting to SQLite in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'firebox.db').resolve()}"
