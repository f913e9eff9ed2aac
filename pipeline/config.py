"""The topology file (topics.yaml): pydantic models, loading, and precise validation errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from pipeline.avro.schemas import SchemaStore
from pipeline.errors import ConfigError

DEFAULT_CONFIG = "topics.yaml"
NO_BRIDGES = "none: the repository's topics.yaml ends with a commented `bridges:` example"


def _as_kafka_value(value: Any) -> str:
    """Kafka configs are strings; YAML gives ints and bools, which we spell as Kafka does."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(f"must be a string, number or boolean, not {type(value).__name__}")


def _as_kafka_config(value: Any) -> Any:
    return {k: _as_kafka_value(v) for k, v in (value or {}).items()} if isinstance(value, dict) else value


KafkaConfig = Annotated[dict[str, str], BeforeValidator(_as_kafka_config)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSecurity(_Strict):
    """TLS and SASL. Secrets never live in the file: it names the environment variables that hold them."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username_env: str = "KAFKA_USERNAME"
    password_env: str = "KAFKA_PASSWORD"
    ca_file: str | None = None  # CA bundle for SSL / SASL_SSL (default: the system's)


class KafkaSettings(_Strict):
    bootstrap: str = "127.0.0.1:9092"
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    # Extra librdkafka settings for every confluent-kafka client (not for secrets: see security).
    client: KafkaConfig = Field(default_factory=dict)
    # How long a stage's group waits for a silent worker (killed, frozen) before its partitions go to the others
    # or to its restarted self. Faust's default is 60 s; the broker refuses less than 6 s.
    session_timeout_s: float = Field(10.0, ge=6, le=1800)

    @model_validator(mode="after")
    def _no_secrets_in_file(self) -> KafkaSettings:
        leaked = [k for k in self.client if any(w in k for w in ("password", "secret", "sasl.jaas"))]
        if leaked:
            raise ValueError(f"kafka.client must not hold secrets ({', '.join(leaked)}): put them in environment "
                             "variables named by kafka.security.username_env / password_env")
        return self


class SchemaRegistrySettings(_Strict):
    url: str


class TopicDefaults(_Strict):
    partitions: int = Field(3, ge=1)
    replication: int = Field(1, ge=1)
    config: KafkaConfig = Field(default_factory=dict)


class TopicSpec(_Strict):
    partitions: int | None = Field(None, ge=1)
    replication: int | None = Field(None, ge=1)
    config: KafkaConfig = Field(default_factory=dict)
    # Full Avro record name of the value; None means raw bytes (dead-letter topics).
    value_schema: str | None = None
    # Field of the value used as the message key (so a document's records share a partition).
    key_field: str | None = None


class BatchSettings(_Strict):
    max_records: int = Field(500, ge=1)
    max_wait_ms: int = Field(50, ge=0)
    # Batches in flight at once (fetched and decoded, in the model, in delivery): 1 runs them one after the other;
    # 3 overlaps fetching the next and delivering the last with the model's work on this one.
    depth: int = Field(3, ge=1, le=16)


class ScalingSettings(_Strict):
    """How KEDA scales the stage's Deployment on its consumer group's lag (see `pipeline k8s render`)."""

    min_replicas: int = Field(1, ge=0)
    # Default: the input topic's partitions; a replica past that count would get no partition and idle.
    max_replicas: int | None = Field(None, ge=1)
    # Target lag per replica: KEDA adds replicas while lag > lag_threshold * replicas.
    lag_threshold: int = Field(100, ge=1)


class BridgeScaling(ScalingSettings):
    """How KEDA scales a source bridge's Deployment on the backlog at its source (see `pipeline k8s render`)."""

    # Where KEDA's scaler reads that backlog, host:port: the NATS monitoring endpoint (default: the url's host,
    # port 8222; a NATS cluster: its headless Service, e.g. nats-headless:8222) or the Redis server (default: the
    # url's host and port). Needed when the URL is only in url_env. RabbitMQ's scaler uses the bridge's URL.
    address: str | None = Field(None, pattern=r"^[\w.-]+:\d+$")


class StageSpec(_Strict):
    # The stage's code, "module:Class"; the framework loads it by this name and never imports stages itself.
    impl: str = Field(pattern=r"^[\w.]+:\w+$")
    input: str
    output: str | None = None
    dead_letter: str
    group: str
    batch: BatchSettings = Field(default_factory=BatchSettings)
    # at-least-once: outputs are flushed, then input offsets committed (a crash may repeat a batch's outputs).
    # exactly-once: a batch's outputs, dead letters and input offsets commit in one Kafka transaction; readers
    # with isolation.level=read_committed (stages, bridges, `pipeline consume`) see each output once.
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    # exactly-once: batches share one transaction for up to this long (Kafka Streams' default is 100 ms);
    # downstream readers see a batch's outputs only once its transaction commits, so this adds up to that latency.
    commit_interval_ms: int = Field(100, ge=0, le=60_000)
    # Port of the stage's web server (metrics, health, stage endpoints); replica i adds 100 * i.
    web_port: int = Field(6066, ge=1, le=65535)
    # Stage-specific settings (model name, labels, Qdrant location, ...), validated against the stage class's
    # `Options` model when the stage is loaded (pipeline.runtime.stage.load_stage).
    options: dict[str, Any] = Field(default_factory=dict)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)


class GatewayForward(_Strict):
    """Where a subject's in-process result goes next: POSTed as JSON to a running stage's route."""

    stage: str
    route: str = Field(pattern=r"^/[\w/-]*$")
    # Host of that stage's web port: loopback locally, its Service in Kubernetes (k8s/base/cluster.topics.yaml).
    host: str = "127.0.0.1"


class GatewaySubject(_Strict):
    """One request subject: the stage whose `serve` capability answers it in-process, micro-batched."""

    stage: str
    forward: GatewayForward | None = None


class GatewaySettings(_Strict):
    """`pipeline serve`: online requests over NATS request/reply, answered by stages in-process."""

    # NATS server URLs, comma-separated; NATS_URL or --nats override them.
    servers: str = "nats://127.0.0.1:4222"
    prefix: str = Field("pipeline", pattern=r"^[\w-]+(\.[\w-]+)*$")  # subjects are PREFIX.NAME
    queue_group: str = Field("pipeline-gateway", pattern=r"^[\w.-]+$")  # replicas share the load
    web_port: int = Field(6110, ge=1, le=65535)  # /metrics, /healthz, /ready
    max_batch: int = Field(32, ge=1)  # requests per model call at most
    max_wait_ms: float = Field(5, ge=0)  # how long the first request of a batch waits for company
    max_chars: int = Field(20000, ge=1)  # longer texts are refused before tokenizing
    # Kafka topic that gets every request and its result (Avro), for replay and audit; null: not recorded.
    record_to: str | None = None
    subjects: dict[str, GatewaySubject] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _subject_names(self) -> GatewaySettings:
        bad = [n for n in self.subjects if not n.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"subjects {bad}: a subject name is one NATS token (letters, digits, '-', '_')")
        return self


class _BridgeEnd(_Strict):
    """What a bridge's source and sink share: where the other broker is, how bodies are written, its web port."""

    kind: Literal["nats", "rabbitmq", "redis"]
    # The other broker's URL, or the environment variable that holds it (for credentials); the env var wins.
    url: str | None = None
    url_env: str | None = None
    format: Literal["json", "avro"] = "json"  # avro: the topic's single-object (or Confluent) encoding
    web_port: int | None = Field(None, ge=1, le=65535)  # /metrics, /healthz, /ready; None: no web server

    def connect_url(self) -> str:
        """The URL to connect to: $url_env if set, else url; ConfigError when neither is there."""
        found = os.environ.get(self.url_env) if self.url_env else None
        if found or self.url:
            return found or self.url  # type: ignore[return-value]
        raise ConfigError(f"no URL for this {self.kind} bridge: set url in topics.yaml or the variable {self.url_env}")

    @model_validator(mode="after")
    def _has_url(self) -> _BridgeEnd:
        if not self.url and not self.url_env:
            raise ValueError("give url (or url_env, the environment variable holding it)")
        return self


class BridgeSource(_BridgeEnd):
    """`pipeline bridge in NAME`: messages from another broker into a Kafka topic (the ingest topic by default)."""

    # NATS JetStream: stream (created for `subject` when missing), subject filter, durable pull consumer.
    # Redis: stream and consumer group. RabbitMQ: queue (declared durable).
    stream: str | None = None
    subject: str | None = None
    consumer: str | None = None  # NATS durable / Redis consumer name; default: bridge-NAME
    group: str | None = None  # Redis consumer group; default: pipeline-bridge-NAME
    queue: str | None = None
    max_priority: int | None = Field(None, ge=1, le=255)  # RabbitMQ x-max-priority of the declared queue
    # RabbitMQ x-dead-letter-exchange of the declared queue: a batch Kafka refuses for good is nacked there
    # instead of the bridge exiting (poison still goes to `dead_letter` on Kafka).
    dead_letter_exchange: str | None = None
    batch: int = Field(100, ge=1)  # messages read, produced and acknowledged together
    block_ms: int = Field(1000, ge=1)  # how long a read waits for the first message
    topic: str | None = None  # Kafka target; None: the ingest topic (the first stage's input)
    dead_letter: str  # Kafka topic for messages that cannot be decoded or validated (raw bytes, reason headers)
    max_bytes: int = Field(900_000, ge=1)  # larger bodies are dead-lettered, not produced
    max_deliver: int = Field(10, ge=1)  # NATS: deliveries before JetStream gives a message up
    ack_wait_s: float = Field(30, gt=0)  # NATS: redelivery after this long without an ack (progress acks extend it)
    claim_idle_ms: int = Field(30_000, ge=1)  # Redis: XAUTOCLAIM entries pending this long (a dead bridge's)
    # KEDA on the source's backlog; max_replicas defaults to the target topic's partitions.
    scaling: BridgeScaling = Field(default_factory=BridgeScaling)

    def group_name(self, name: str) -> str:
        """The Redis consumer group of the bridge called `name`."""
        return self.group or f"pipeline-bridge-{name}"

    def consumer_name(self, name: str) -> str:
        """The NATS durable consumer, or the Redis consumer, of the bridge called `name`."""
        return self.consumer or bridge_stage(name)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> BridgeSource:
        need = {"nats": ("stream", "subject"), "redis": ("stream",), "rabbitmq": ("queue",)}[self.kind]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} source needs {' and '.join(missing)}")
        return self


class BridgeSink(_BridgeEnd):
    """`pipeline bridge out NAME`: a Kafka topic's records to another broker, committed after it confirmed."""

    topic: str  # Kafka topic read (e.g. the classified one)
    group: str  # its own consumer group
    web_port: int = Field(6120, ge=1, le=65535)  # the stage runtime's web server: /metrics, /healthz, /ready
    dead_letter: str  # records the sink refuses for good (the stage runtime's dead-letter topic)
    exchange: str | None = None  # RabbitMQ: exchange published to with confirms ("" = the default exchange)
    routing_key: str = ""  # RabbitMQ routing key (with the default exchange: the queue name)
    subject: str | None = None  # NATS subject
    jetstream: bool = False  # NATS: publish to JetStream with Nats-Msg-Id for de-duplication
    stream: str | None = None  # Redis stream (XADD)
    maxlen: int = Field(1_000_000, ge=1)  # Redis: XADD MAXLEN ~ this many entries
    batch: BatchSettings = Field(default_factory=BatchSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)  # KEDA on its group's lag, as a stage's

    @model_validator(mode="after")
    def _fields_of_kind(self) -> BridgeSink:
        need = {"nats": ("subject",), "redis": ("stream",), "rabbitmq": ("exchange",)}[self.kind]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} sink needs {' and '.join(missing)}")
        return self


def bridge_stage(name: str) -> str:
    """The stage name a bridge writes in its dead letters' headers (and a sink runs under): bridge-NAME."""
    return f"bridge-{name}"


class BridgesSettings(_Strict):
    """Bridges between Kafka and the other brokers: sources feed a Kafka topic, sinks read one."""

    sources: dict[str, BridgeSource] = Field(default_factory=dict)
    sinks: dict[str, BridgeSink] = Field(default_factory=dict)


class ResolvedTopic(BaseModel):
    """A topic with the defaults applied: what the cluster should hold."""

    name: str
    partitions: int
    replication: int
    config: dict[str, str]
    value_schema: str | None
    key_field: str | None


class Topology(_Strict):
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    schemas_dir: Path = Path("schemas")
    framing: Literal["single-object", "confluent"] = "single-object"
    schema_registry: SchemaRegistrySettings | None = None
    topic_defaults: TopicDefaults = Field(default_factory=TopicDefaults)
    topics: dict[str, TopicSpec]
    stages: dict[str, StageSpec] = Field(default_factory=dict)
    gateway: GatewaySettings | None = None
    bridges: BridgesSettings = Field(default_factory=BridgesSettings)
    _root: Path = PrivateAttr(default_factory=Path.cwd)
    _source: Path = PrivateAttr(default=Path(DEFAULT_CONFIG))

    @property
    def source(self) -> Path:
        """The file this topology was read from (for error messages)."""
        return self._source

    def stage(self, name: str) -> StageSpec:
        """The named stage's spec; ConfigError listing the stages when there is none by that name."""
        if name not in self.stages:
            known = ", ".join(self.stages) or "none"
            raise ConfigError(f"no stage '{name}' in {self._source} (stages: {known})")
        return self.stages[name]

    def resolve_path(self, value: str | Path) -> Path:
        """A path from the file, taken relative to the file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self._root / path).resolve()

    @model_validator(mode="after")
    def _check_references(self) -> Topology:
        if self.framing == "confluent" and self.schema_registry is None:
            raise ValueError("framing 'confluent' needs a schema_registry: {url: ...} section")
        for name, stage in self.stages.items():
            for role in ("input", "output", "dead_letter"):
                topic = getattr(stage, role)
                if topic is not None and topic not in self.topics:
                    raise ValueError(
                        f"stages.{name}.{role}: topic '{topic}' is not declared under 'topics'"
                    )
        for name in self.stages:
            self._check_scaling(name)
        return self

    @model_validator(mode="after")
    def _unique_web_ports(self) -> Topology:
        """Two stages on one web port: the second cannot start its web server (metrics, health, routes)."""
        owners: dict[int, str] = {}
        for name, stage in self.stages.items():
            other = owners.setdefault(stage.web_port, name)
            if other != name:
                raise ValueError(f"stages.{name}.web_port: {stage.web_port} is also the web port of stages.{other}; "
                                 "give each stage its own port (replica i of a stage uses web_port + 100 * i)")
        return self

    @model_validator(mode="after")
    def _check_gateway(self) -> Topology:
        # Its stages are checked when the gateway starts (gateway_problems), so a topology trimmed to a few
        # stages (tests, examples) still loads.
        gateway = self.gateway
        if gateway is not None and gateway.record_to is not None:
            spec = self.topics.get(gateway.record_to)
            if spec is None or spec.value_schema is None:
                raise ValueError(f"gateway.record_to: '{gateway.record_to}' must be a topic declared under "
                                 "'topics' with a value_schema (pipeline.gateway.Exchange)")
        return self

    @model_validator(mode="after")
    def _check_bridges(self) -> Topology:
        ends = [(f"sources.{n}", b, ("topic", "dead_letter")) for n, b in self.bridges.sources.items()]
        ends += [(f"sinks.{n}", b, ("topic", "dead_letter")) for n, b in self.bridges.sinks.items()]
        for where, bridge, roles in ends:
            for role in roles:
                topic = getattr(bridge, role)
                if topic is not None and topic not in self.topics:
                    hint = f"; add `{topic}: {{partitions: 1}}` there" if role == "dead_letter" else ""
                    raise ValueError(f"bridges.{where}.{role}: topic '{topic}' is not declared under 'topics'{hint}, "
                                     "then run `pipeline topics apply`")
            if isinstance(bridge, BridgeSource) and bridge.topic is None and self.ingest_topic() is None:
                raise ValueError(f"bridges.{where}.topic: no stages to take the ingest topic from; name the topic")
        both = sorted(self.bridges.sources.keys() & self.bridges.sinks.keys())
        if both:
            raise ValueError(f"bridges: '{both[0]}' is both a source and a sink; give them different names (a "
                             "bridge's dead letters, Deployment and `pipeline dlq --bridge` go by its name)")
        for name in [*self.bridges.sources, *self.bridges.sinks]:
            if bridge_stage(name) in self.stages:
                raise ValueError(f"bridges: bridge '{name}' runs as {bridge_stage(name)}, which is also a stage's "
                                 "name; rename one")
        for name, sink in self.bridges.sinks.items():
            self._check_replicas(f"bridges.sinks.{name}", sink.scaling, sink.topic)
        for name, source in self.bridges.sources.items():
            if source.scaling.min_replicas > self.bridge_max_replicas(name):
                raise ValueError(f"bridges.sources.{name}.scaling.min_replicas: {source.scaling.min_replicas} is more "
                                 f"than max_replicas ({self.bridge_max_replicas(name)})")
        return self

    def ingest_topics(self) -> list[str]:
        """Topics stages read that no stage writes: where records enter the pipeline."""
        written = {spec.output for spec in self.stages.values() if spec.output}
        return sorted({spec.input for spec in self.stages.values()} - written)

    def ingest_topic(self) -> str | None:
        """The one topic records enter by; None when the stages read none or several such topics."""
        found = self.ingest_topics()
        return found[0] if len(found) == 1 else None

    def bridge_source(self, name: str) -> BridgeSource:
        if name not in self.bridges.sources:
            known = ", ".join(self.bridges.sources) or NO_BRIDGES
            raise ConfigError(f"no bridge source '{name}' in {self._source} (bridges.sources: {known})")
        return self.bridges.sources[name]

    def bridge_sink(self, name: str) -> BridgeSink:
        if name not in self.bridges.sinks:
            known = ", ".join(self.bridges.sinks) or NO_BRIDGES
            raise ConfigError(f"no bridge sink '{name}' in {self._source} (bridges.sinks: {known})")
        return self.bridges.sinks[name]

    def gateway_problems(self) -> list[str]:
        """Gateway subjects that name a stage this topology lacks."""
        problems = []
        for name, subject in (self.gateway.subjects if self.gateway else {}).items():
            for where, stage in ((f"subjects.{name}.stage", subject.stage),
                                 (f"subjects.{name}.forward.stage", subject.forward and subject.forward.stage)):
                if stage is not None and stage not in self.stages:
                    problems.append(f"gateway.{where}: no stage '{stage}' (stages: {', '.join(self.stages)})")
        return problems

    def _check_scaling(self, name: str) -> None:
        self._check_replicas(f"stages.{name}", self.stages[name].scaling, self.stages[name].input)

    def _check_replicas(self, where: str, scaling: ScalingSettings, input_topic: str) -> None:
        """A consumer group's replicas: no more than its input's partitions (the extra ones would idle)."""
        partitions = self.topic(input_topic).partitions
        if scaling.max_replicas is not None and scaling.max_replicas > partitions:
            raise ValueError(
                f"{where}.scaling.max_replicas: {scaling.max_replicas} is more than the {partitions} "
                f"partition(s) of its input {input_topic}, so the extra replicas would idle: lower "
                f"max_replicas or raise topics.{input_topic}.partitions"
            )
        most = scaling.max_replicas or partitions
        if scaling.min_replicas > most:
            raise ValueError(f"{where}.scaling.min_replicas: {scaling.min_replicas} is more than max_replicas ({most})")

    def max_replicas(self, stage: str) -> int:
        """The most replicas the stage scales to: scaling.max_replicas, else its input topic's partitions."""
        spec = self.stages[stage]
        return spec.scaling.max_replicas or self.topic(spec.input).partitions

    def bridge_max_replicas(self, name: str) -> int:
        """The most replicas a bridge scales to: scaling.max_replicas, else the partitions of the topic a sink reads
        or a source feeds."""
        bridge = self.bridges.sources.get(name) or self.bridge_sink(name)
        topic = bridge.topic or self.ingest_topic()
        assert topic is not None  # checked when topics.yaml was loaded
        return bridge.scaling.max_replicas or self.topic(topic).partitions

    def topic(self, name: str) -> ResolvedTopic:
        """The named topic with defaults applied; ConfigError if it is not declared."""
        if name not in self.topics:
            known = ", ".join(sorted(self.topics))
            raise ConfigError(f"topic '{name}' is not declared in topics.yaml (declared: {known})")
        spec = self.topics[name]
        d = self.topic_defaults
        return ResolvedTopic(
            name=name,
            partitions=spec.partitions or d.partitions,
            replication=spec.replication or d.replication,
            config={**d.config, **spec.config},
            value_schema=spec.value_schema,
            key_field=spec.key_field,
        )

    def resolved_topics(self) -> list[ResolvedTopic]:
        return [self.topic(name) for name in self.topics]


def _format_location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def validation_error(source: str | Path, exc: ValidationError, prefix: tuple[Any, ...] = ()) -> ConfigError:
    """A pydantic error as a ConfigError naming `source` and each problem's path (under `prefix`) inside it."""
    lines = [f"{source}: {len(exc.errors())} problem(s):"]
    for err in exc.errors():
        lines.append(f"  {_format_location((*prefix, *err['loc']))}: {err['msg']}")
    return ConfigError("\n".join(lines))


def validate_topology(raw: dict[str, Any], source: str | Path) -> Topology:
    """The topology from parsed YAML; ConfigError naming `source` and each problem's path inside it."""
    try:
        return Topology.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(source, exc) from None


def load_topology(path: str | Path | None = None, bootstrap: str | None = None) -> Topology:
    """Read and validate topics.yaml; KAFKA_BOOTSTRAP (or `bootstrap`) overrides kafka.bootstrap."""
    path = Path(path or os.environ.get("PIPELINE_CONFIG") or DEFAULT_CONFIG)
    if not path.is_file():
        raise ConfigError(
            f"{path}: topology file not found. Run from the project root, "
            "or pass --config PATH (or set PIPELINE_CONFIG)."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'topics' (and 'stages') at the top")
    topology = validate_topology(raw, path)
    topology._root = path.parent.resolve()
    topology._source = path
    topology.schemas_dir = topology.resolve_path(topology.schemas_dir)
    override = bootstrap or os.environ.get("KAFKA_BOOTSTRAP")
    if override:
        topology.kafka.bootstrap = override
    security = topology.kafka.security
    for field, env in (("protocol", "KAFKA_SECURITY_PROTOCOL"), ("sasl_mechanism", "KAFKA_SASL_MECHANISM"),
                       ("ca_file", "KAFKA_SSL_CA_FILE")):
        if os.environ.get(env):
            setattr(security, field, os.environ[env])
    try:
        KafkaSecurity.model_validate(security.model_dump())
    except ValidationError as exc:
        raise ConfigError(f"KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_MECHANISM: {exc.errors()[0]['msg']}") from None
    _check_schema_names(path, topology)
    return topology


def _check_schema_names(path: Path, topology: Topology) -> None:
    store = SchemaStore.load(topology.schemas_dir)
    for name, spec in topology.topics.items():
        if spec.value_schema and spec.value_schema not in store.names():
            known = ", ".join(sorted(store.names())) or "none"
            raise ConfigError(
                f"{path}: topics.{name}.value_schema: no schema named '{spec.value_schema}' "
                f"in {topology.schemas_dir} (known: {known})"
            )
