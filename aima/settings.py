"""Central configuration: one `Settings` object, built from layers (each overrides the ones before it):

1. the defaults here, which point at the embedded servers that `aima dev` starts, so a fresh checkout runs with no
   configuration;
2. a TOML file: ``$AIMA_CONFIG_FILE``, else ``./aima.toml`` when it exists (tables such as ``[auth]`` fill the nested
   models);
3. the environment (prefix ``AIMA_``, nested with ``__``).

Administrators may override a few keys at runtime on top of these (`aima.services.runtime_settings`).
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEV_JWT_SECRET = "aima-development-secret-change-me-0123456789"  # noqa: S105 - refused in production
DEV_S3_SECRET = "aima-dev-secret"  # noqa: S105 - refused in production
#: The environment variable naming the configuration file, and the file read without it (when it exists).
CONFIG_FILE_ENV = "AIMA_CONFIG_FILE"
DEFAULT_CONFIG_FILE = Path("aima.toml")


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class S3Settings(BaseModel):
    endpoint_url: str = "http://127.0.0.1:8433"
    access_key: str = "aima"
    secret_key: SecretStr = SecretStr(DEV_S3_SECRET)
    region: str = "us-east-1"
    bucket: str = "aima-media"
    #: Size of each multipart part when streaming an upload to S3 (S3's minimum is 5 MiB).
    part_size: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    #: The S3 address browsers and clients use, when it differs from `endpoint_url` (presigned URLs name it).
    public_endpoint_url: str | None = None


class UploadSettings(BaseModel):
    """Ingestion: probing limits, resumable uploads and download links."""

    #: Child processes that probe uploads, each under `probe_memory_mb` of address space and `probe_timeout_s`.
    probe_processes: int = Field(default=2, ge=1)
    probe_memory_mb: int = Field(default=2048, ge=256)
    probe_timeout_s: float = Field(default=60.0, gt=0)
    #: Images with more pixels are refused (decompression bombs).
    max_image_pixels: int = Field(default=200_000_000, ge=1)
    #: Video and audio longer than this are refused (a tiny file can claim days of frames).
    max_duration_s: float = Field(default=24 * 3600.0, gt=0)
    #: Largest file a resumable upload may announce (GraphQL multipart uploads obey `max_upload_bytes`).
    max_resumable_bytes: int = Field(default=200 * 1024**3, ge=1)
    #: Part size offered to resumable uploads (S3 allows at most 10,000 parts).
    resumable_part_bytes: int = Field(default=64 * 1024 * 1024, ge=5 * 1024 * 1024)
    #: An unfinished resumable upload is aborted and its parts removed this long after it started.
    resumable_expiry_hours: float = Field(default=24.0, gt=0)
    #: Lifetime of presigned part and download URLs.
    presigned_url_seconds: int = Field(default=900, ge=10, le=7 * 24 * 3600)
    #: Perceptual-hash bits two images may differ in and still count as near-duplicates.
    near_duplicate_bits: int = Field(default=8, ge=0, le=32)


class Registration(enum.StrEnum):
    """Who may create an account: anyone, anyone with an administrator's approval, or only administrators."""

    OPEN = "open"
    APPROVAL = "approval"
    CLOSED = "closed"


class AuthSettings(BaseModel):
    registration: Registration = Registration.OPEN
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    #: Key id of `jwt_secret`, written in each token's header. To rotate: move the current key to
    #: `jwt_previous_keys` under its id, set a new secret and id; drop the old key once its tokens have expired.
    jwt_key_id: str = Field(default="k1", min_length=1, max_length=64)
    #: Keys that still verify tokens (by key id) but sign none.
    jwt_previous_keys: dict[str, SecretStr] = {}
    jwt_issuer: str = "aima"
    jwt_audience: str = "aima-api"
    access_token_minutes: int = Field(default=15, ge=1)
    #: Lifetime of a refresh token; each use replaces it with a new one, so an active session lasts.
    refresh_token_days: int = Field(default=14, ge=1)
    #: argon2id parameters (OWASP: m=19 MiB, t=2, p=1 at minimum).
    argon2_memory_kib: int = Field(default=19 * 1024, ge=19 * 1024)
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_parallelism: int = Field(default=1, ge=1)
    #: Failed sign-ins allowed per account and per client address (within `throttle_window_s`) before each
    #: further attempt waits, twice as long every time, up to the caps: short for an account, so nobody can lock
    #: a victim out for long; longer for an address.
    throttle_free_failures_account: int = Field(default=5, ge=1)
    throttle_free_failures_address: int = Field(default=20, ge=1)
    throttle_window_s: int = Field(default=900, ge=1)
    throttle_base_delay_s: float = Field(default=1.0, gt=0)
    throttle_max_delay_account_s: float = Field(default=60.0, gt=0)
    throttle_max_delay_address_s: float = Field(default=900.0, gt=0)


class GraphQLSettings(BaseModel):
    max_depth: int = Field(default=12, ge=2)
    max_aliases: int = Field(default=30, ge=1)
    max_tokens: int = Field(default=5000, ge=100)
    #: Schema introspection and "Did you mean ...?" suggestions in errors; None: on in development only.
    introspection: bool | None = None
    suggestions: bool | None = None


class WorkerSettings(BaseModel):
    queue_name: str = "aima:queue:cpu"
    #: How often an idle worker polls Redis for new tasks; arq's default of 0.5 s adds that much latency.
    poll_delay_s: float = Field(default=0.005, gt=0)
    #: Longest an idle worker waits before polling anyway (wake-ups on Redis pub/sub usually come first).
    idle_poll_s: float = Field(default=0.5, gt=0)
    max_jobs: int = Field(default=4, ge=1)
    job_timeout_s: int = Field(default=3600, ge=1)
    #: Runs of one task (each claim by a worker counts, also one whose worker vanished) before a transient error (a
    #: model endpoint or store that is down or busy) fails it.
    max_tries: int = Field(default=8, ge=1)
    #: Backoff after a transient error: a random wait up to `retry_base_s` * 2^(runs - 1), at most `retry_cap_s`
    #: ("full jitter"), during which the task shows as waiting for model.
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_cap_s: float = Field(default=60.0, gt=0)
    #: Longest a task on a model endpoint keeps waiting for it (transient errors) after its first run: then it fails
    #: even with runs left, so that the job's dossier is made from what exists and names what is missing.
    model_wait_deadline_s: float = Field(default=900.0, gt=0)
    #: How often a worker tells PostgreSQL that its running tasks are alive (and checks whether they were cancelled).
    heartbeat_s: float = Field(default=1.0, gt=0)
    #: A running task whose heartbeat is older than this lost its worker: the reconciler runs it again.
    heartbeat_timeout_s: float = Field(default=15.0, gt=0)
    #: Seconds between two runs of the reconciler (a divisor of 60: it runs at those seconds of each minute).
    reconcile_interval_s: int = Field(default=10, ge=1, le=60)
    #: Port of the worker's Prometheus endpoint; 0 turns it off.
    metrics_port: int = 0


class IdentitySettings(BaseModel):
    """How faces and speaker turns are grouped into the persons and voices of a case (`aima.services.identities`)."""

    #: Cosine similarity from which a face joins a person: ArcFace embeddings of one person mostly score above 0.5,
    #: of two people below 0.3.
    face_threshold: float = Field(default=0.45, ge=-1.0, le=1.0)
    #: The same for voices (per-turn GE2E speaker embeddings, 256-d): turns of one voice in two recordings scored
    #: 0.91-0.95, of two different voices up to 0.87 (measured on espeak-ng voices; tune on real recordings).
    voice_threshold: float = Field(default=0.88, ge=-1.0, le=1.0)
    #: Nearest earlier members of the case fetched for each new face or voice to find its cluster.
    neighbours: int = Field(default=32, ge=1, le=1024)


#: Names of model endpoints: lower case (environment variable names are read in lower case).
_ENDPOINT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class EndpointSettings(BaseModel):
    """One model server (``[inference.endpoints.<name>]``, or ``AIMA_INFERENCE__ENDPOINTS__<NAME>__URL`` and the
    like), used through `aima.inference`. Unknown keys are refused, so that a misspelt one cannot go unnoticed."""

    model_config = ConfigDict(extra="forbid")

    #: Base URL of the server (``http://tgi:8080``; an OpenAI-compatible server without the ``/v1``).
    url: str
    #: "tgi": TGI's native API (``/generate``, ``/generate_stream``, JSON grammar, images inline in the prompt);
    #: "openai": the chat completions API of vLLM, SGLang or TGI's Messages API (the server applies the template).
    protocol: Literal["tgi", "openai"]
    #: The served model: sent as ``model`` to OpenAI-compatible servers (required there); for TGI it names the
    #: prompt format when `prompt_format` is not set (``llava-hf/llava-v1.6-34b-hf`` is ChatML).
    model: str = ""
    #: The chat template of TGI's native API, which takes one prompt string: chatml, llama3, mistral or vicuna
    #: (`aima.inference.prompts`); None: derived from `model`.
    prompt_format: Literal["chatml", "llama3", "mistral", "vicuna"] | None = None
    #: Sent as ``Authorization: Bearer <key>``; never logged.
    api_key: SecretStr | None = None
    #: Requests this process sends to the endpoint at once; more wait for a free slot.
    max_concurrency: int = Field(default=8, ge=1, le=4096)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    #: Longest silence while reading an answer: between two streamed tokens, or the whole generation when `stream`
    #: is off (then raise it to the longest generation expected).
    read_timeout_s: float = Field(default=120.0, gt=0)
    #: Longest one request may take from sending to the last token, however steadily tokens arrive.
    request_timeout_s: float = Field(default=600.0, gt=0)
    #: Generate through the streaming API, so that a stalled server is noticed after `read_timeout_s` while long
    #: generations still finish.
    stream: bool = True
    #: Default and upper bound of the tokens one answer may have.
    max_new_tokens: int = Field(default=1024, ge=1)
    #: The prompt budget callers fit their input into (None: what the server reports in `Endpoint.info`).
    max_input_tokens: int | None = Field(default=None, ge=1)
    #: Tries of one call on a busy or unreachable server (429, 5xx, timeouts, cut streams) before it raises
    #: `ModelUnavailable`; waits between them grow from `retry_base_s` up to `retry_cap_s`, with jitter.
    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_base_s: float = Field(default=0.5, gt=0)
    retry_cap_s: float = Field(default=8.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = AnyHttpUrl(value)
        if url.query or url.fragment:
            raise ValueError("must not have a query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _protocol_needs(self) -> EndpointSettings:
        if self.protocol == "openai" and not self.model:
            raise ValueError("model is required with protocol 'openai' (the name the server serves)")
        if self.protocol == "openai" and self.prompt_format is not None:
            raise ValueError("prompt_format applies to protocol 'tgi' only (OpenAI-compatible servers template)")
        if self.read_timeout_s > self.request_timeout_s:
            raise ValueError("read_timeout_s must not exceed request_timeout_s")
        return self


class InferenceSettings(BaseModel):
    """Model endpoints by name, and which of them serve the vision and fusion analyzers by default."""

    model_config = ConfigDict(extra="forbid")

    endpoints: dict[str, EndpointSettings] = {}
    #: The endpoint of the vision-language model (image descriptions, `Endpoints.vision`).
    vision_endpoint: str = "llava"
    #: The endpoint of the language model that fuses a media item's findings (`Endpoints.fusion`).
    fusion_endpoint: str = "llama"

    @field_validator("endpoints")
    @classmethod
    def _names(cls, value: dict[str, EndpointSettings]) -> dict[str, EndpointSettings]:
        for name in value:
            if not _ENDPOINT_NAME.fullmatch(name):
                raise ValueError(f"endpoint name {name!r}: use lower-case letters, digits, '-' and '_'")
        return value

    @field_validator("vision_endpoint", "fusion_endpoint")
    @classmethod
    def _role_name(cls, value: str) -> str:
        if not _ENDPOINT_NAME.fullmatch(value):
            raise ValueError("use lower-case letters, digits, '-' and '_'")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AIMA_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    #: Production unless told otherwise, so a forgotten setting cannot run a server on the public default secrets;
    #: `aima dev` and the test-suite say development and test.
    environment: Environment = Environment.PRODUCTION
    #: The TOML file these settings were read from (`AIMA_CONFIG_FILE`, else ./aima.toml when it exists); None: none.
    config_file: Path | None = None
    data_dir: Path = Path(".aima")
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:55432/aima"
    mongo_url: str = "mongodb://127.0.0.1:27118"
    mongo_database: str = "aima"
    milvus_url: str = "http://127.0.0.1:19531"
    redis_url: str = "redis://127.0.0.1:6389/0"
    #: Prefix of every Redis key and channel AIMA uses, so that deployments can share a Redis.
    redis_prefix: str = "aima"
    s3: S3Settings = S3Settings()
    auth: AuthSettings = AuthSettings()
    worker: WorkerSettings = WorkerSettings()
    graphql: GraphQLSettings = GraphQLSettings()

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: Browser origins allowed to open websockets and send credentials.
    allowed_origins: list[str] = ["http://127.0.0.1:8000", "http://localhost:8000"]
    #: Addresses of reverse proxies whose X-Forwarded-For is believed (for audit entries and sign-in throttling).
    trusted_proxies: list[str] = []
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1)
    uploads: UploadSettings = UploadSettings()
    identities: IdentitySettings = IdentitySettings()
    #: Model endpoints (``[inference.endpoints.<name>]``) for `aima.inference`.
    inference: InferenceSettings = InferenceSettings()
    log_level: str = "INFO"
    log_json: bool = True
    #: Seconds each readiness check may take before its backend counts as down.
    readiness_timeout_s: float = Field(default=2.0, gt=0)
    #: Media older than this many days (by upload time) are deleted by the worker's retention sweep, with their
    #: derived files, results and vectors; 0 keeps everything. (A number, not None, so that administrators can set
    #: and read it at runtime: runtime values are non-null JSON.)
    retention_days: int = Field(default=0, ge=0)
    #: Each plugin's own settings by plugin name: ``[plugins.whisper]`` in aima.toml or
    #: ``AIMA_PLUGINS__WHISPER__MODEL``; each plugin validates its table itself (`aima.analysis.PluginConfig`).
    plugins: dict[str, dict[str, Any]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the configuration file, then the defaults."""
        arguments = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
        path = config_file_path(arguments.get("config_file"))
        return init_settings, env_settings, dotenv_settings, file_secret_settings, ConfigFileSource(settings_cls, path)

    def child_environment(self) -> dict[str, str]:
        """The `AIMA_*` variables that make a child process (an API or a worker) see these settings."""
        file = {CONFIG_FILE_ENV: str(self.config_file.resolve())} if self.config_file is not None else {}
        return {
            **file,
            "AIMA_ENVIRONMENT": str(self.environment),
            "AIMA_DATABASE_URL": self.database_url,
            "AIMA_MONGO_URL": self.mongo_url,
            "AIMA_MONGO_DATABASE": self.mongo_database,
            "AIMA_MILVUS_URL": self.milvus_url,
            "AIMA_REDIS_URL": self.redis_url,
            "AIMA_REDIS_PREFIX": self.redis_prefix,
            "AIMA_S3__ENDPOINT_URL": self.s3.endpoint_url,
            "AIMA_S3__ACCESS_KEY": self.s3.access_key,
            "AIMA_S3__SECRET_KEY": self.s3.secret_key.get_secret_value(),
            "AIMA_S3__BUCKET": self.s3.bucket,
            "AIMA_WORKER__QUEUE_NAME": self.worker.queue_name,
            "AIMA_WORKER__POLL_DELAY_S": str(self.worker.poll_delay_s),
            "AIMA_WORKER__MAX_JOBS": str(self.worker.max_jobs),
            "AIMA_LOG_LEVEL": self.log_level,
            "AIMA_API_PORT": str(self.api_port),
            "AIMA_DATA_DIR": str(self.data_dir),
        }

    @property
    def introspection(self) -> bool:
        flag = self.graphql.introspection
        return self.environment is Environment.DEVELOPMENT if flag is None else flag

    @property
    def suggestions(self) -> bool:
        flag = self.graphql.suggestions
        return self.environment is Environment.DEVELOPMENT if flag is None else flag

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment is Environment.PRODUCTION:
            if self.auth.jwt_secret.get_secret_value() == DEV_JWT_SECRET:
                raise ValueError(
                    "AIMA_AUTH__JWT_SECRET must be set in production "
                    "(or AIMA_ENVIRONMENT=development on a developer's machine)"
                )
            if len(self.auth.jwt_secret.get_secret_value()) < 32:
                raise ValueError("AIMA_AUTH__JWT_SECRET must be at least 32 characters")
            if self.s3.secret_key.get_secret_value() == DEV_S3_SECRET:
                raise ValueError("AIMA_S3__SECRET_KEY must be set in production")
        return self


class ConfigFileError(ValueError):
    """The configuration file is missing, not TOML, or holds a value that is not a valid setting."""


def config_file_path(explicit: str | Path | None = None) -> Path | None:
    """The file to read: `explicit`, else `$AIMA_CONFIG_FILE` (both must exist), else ./aima.toml when it exists."""
    named = explicit or os.environ.get(CONFIG_FILE_ENV)
    if named:
        return Path(named).expanduser()
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


class ConfigFileSource(TomlConfigSettingsSource):
    """The TOML layer. A file that cannot be read, is not TOML, or holds an unknown key or an invalid value stops
    the process with an error naming the file and the key, before anything starts."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        self.path = path
        if path is not None and not path.is_file():
            raise ConfigFileError(f"configuration file {path} does not exist ({CONFIG_FILE_ENV})")
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            with file_path.open(mode="rb") as file:
                values = tomllib.load(file)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(f"configuration file {file_path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigFileError(f"configuration file {file_path} cannot be read: {exc}") from None
        problems = _check_values(Settings, values, prefix="")
        if problems:
            raise ConfigFileError(f"configuration file {file_path} is invalid: " + "; ".join(problems))
        return {**values, "config_file": file_path}


def _check_values(model: type[BaseModel], values: Mapping[str, Any], *, prefix: str) -> list[str]:
    """What is wrong with these values for `model`, one "key: reason" each (nested tables are checked key by key)."""
    problems = []
    for name, value in values.items():
        key = f"{prefix}{name}"
        field = model.model_fields.get(name)
        if field is None or key == "config_file":
            problems.append(f"{key}: not a setting")
            continue
        nested = field.annotation
        if _is_model(nested):
            if not isinstance(value, dict):
                problems.append(f"{key}: must be a table ([{key}])")
            else:
                problems.extend(_check_values(nested, value, prefix=f"{key}."))  # type: ignore[arg-type]
            continue
        try:
            field_adapter(field).validate_python(value)
        except ValidationError as exc:
            problems.extend(f"{'.'.join(map(str, (key, *error['loc'])))}: {error['msg']}" for error in exc.errors())
    return problems


def explicit_settings(settings: Settings) -> dict[str, str]:
    """Which dotted keys of `settings` the configuration file or the environment set: key -> "file"/"environment".

    Read again from the file and the environment, for reports; keys set by constructor arguments are not listed.
    """
    layers: dict[str, str] = {}
    if settings.config_file is not None and settings.config_file.is_file():
        with settings.config_file.open("rb") as file:
            _flatten(tomllib.load(file), "", "file", layers)
    _flatten(EnvSettingsSource(Settings)(), "", "environment", layers)
    layers.pop("config_file", None)
    return layers


def _flatten(values: Mapping[str, Any], prefix: str, layer: str, into: dict[str, str]) -> None:
    for name, value in values.items():
        key = f"{prefix}{name.lower()}"
        field = None if prefix else Settings.model_fields.get(key)
        if field is not None and isinstance(value, Mapping) and _is_model(field.annotation):
            _flatten(value, f"{key}.", layer, into)
        else:
            into[key] = layer


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def field_adapter(field: FieldInfo) -> TypeAdapter[Any]:
    """A validator of one field's values, with the field's constraints (``ge=1`` and the like)."""
    return TypeAdapter(Annotated[field.annotation, field])  # type: ignore[arg-type]
