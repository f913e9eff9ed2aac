"""A real single-node Apache Kafka (KRaft) for development and tests, fetched from Maven Central."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.errors import KafkaUnavailable, PipelineError
from pipeline.dev.processes import alive, log_tail, port_in_use, stop_pid
from pipeline.paths import cache_home

# The broker version the integration tests prove with confluent-kafka and faust-streaming/aiokafka.
KAFKA_VERSION = "4.1.1"
JVM_OPTS = ["-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]



def resource(name: str) -> Path:
    """A file shipped in pipeline/dev/resources."""
    return Path(str(resources.files("pipeline.dev") / "resources" / name))


SKIP_LOCAL = "Or skip the local broker and point at an existing cluster with --bootstrap HOST:PORT " \
             "(or KAFKA_BOOTSTRAP=HOST:PORT)."


def require(tool: str, what: str, alternative: str = SKIP_LOCAL) -> str:
    """The path of program TOOL, or an error that says what it is for and how to get it."""
    path = shutil.which(tool)
    if path is None:
        raise PipelineError(f"`{tool}` not found: {what}. {alternative}".rstrip())
    return path


def fetch_jars(version: str = KAFKA_VERSION) -> Path:
    """The broker's runtime jars, downloaded once through Maven into the cache."""
    return maven_fetch(resource("kafka-pom.xml"), cache_home() / f"kafka-{version}" / "libs", version,
                       f"kafka_2.13-{version}.jar", f"org.apache.kafka:kafka_2.13:{version}")


def maven_fetch(pom: Path, dest: Path, version: str, marker_jar: str, what: str,
                skip: set[str] = frozenset()) -> Path:
    """The runtime dependencies of POM copied by Maven into DEST once (non-interactive, atomic: a folder is
    used only once complete), leaving out jars named in SKIP (already on the classpath from elsewhere)."""
    if (dest / ".complete").exists():
        return dest
    mvn = require("mvn", "Maven is needed once to fetch Kafka from Maven Central (apt-get install maven)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}-", dir=dest.parent))
    cmd = [
        mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={tmp}", f"-Dkafka.version={version}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not (tmp / marker_jar).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise PipelineError(f"Maven could not fetch {what}:\n" + "\n".join(tail))
    for name in skip:
        (tmp / name).unlink(missing_ok=True)
    (tmp / ".complete").write_text(version)
    if (dest / ".complete").exists():  # another process finished the same fetch meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def server_properties(data_dir: Path, port: int, controller_port: int,
                      sasl_port: int | None = None, sasl_user: tuple[str, str] | None = None) -> str:
    """Single-node KRaft settings sized for a small machine (replication 1, few internal partitions); with
    `sasl_port`, also a SASL_PLAINTEXT listener (PLAIN, one user) for testing authenticated clients."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",  # topics come from topics.yaml, nowhere else
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": "2097152",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    if sasl_port is not None and sasl_user is not None:
        user, password = sasl_user
        settings["listeners"] += f",SASL_PLAINTEXT://127.0.0.1:{sasl_port}"
        settings["advertised.listeners"] += f",SASL_PLAINTEXT://127.0.0.1:{sasl_port}"
        settings["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
        settings["sasl.enabled.mechanisms"] = "PLAIN"
        settings["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{user}" password="{password}" user_{user}="{password}";'
        )
    return "".join(f"{k}={v}\n" for k, v in settings.items())



def admin_ready(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when the broker answers a metadata request (the port alone opens too early)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "logger": _quiet})
    try:
        admin.list_topics(timeout=timeout)
        return True
    except Exception:
        return False


# librdkafka logs every refused connection while the broker starts; nobody needs to see those.
_quiet = logging.getLogger("pipeline.devbroker.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@dataclass
class DevBroker:
    """The local broker: its files under `home`, its process recorded by pid."""

    home: Path
    port: int = 9092
    controller_port: int = 9093
    version: str = KAFKA_VERSION
    sasl: bool = False  # also listen with SASL_PLAINTEXT on port + 2, user from KAFKA_USERNAME / KAFKA_PASSWORD

    @classmethod
    def default(cls, port: int = 9092, sasl: bool = False) -> DevBroker:
        home = Path(os.environ.get("PIPELINE_DEV_HOME", cache_home() / "dev"))
        return cls(home=home, port=port, controller_port=port + 1, sasl=sasl)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.home / "broker.json"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "broker.out"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def state(self) -> dict | None:
        """What `up` recorded, if the process it started is still this broker."""
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        pid = state.get("pid")
        if not isinstance(pid, int) or not alive(pid) or not self._is_our_broker(pid):
            return None
        return state

    def _is_our_broker(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"kafka.Kafka" in cmdline and str(self.config_file).encode() in cmdline

    def up(self, timeout: float = 120.0) -> dict:
        """Start the broker unless it runs; return its state once an admin request succeeds."""
        running = self.state()
        if running is not None:
            if not admin_ready(running["bootstrap"], timeout=10):
                raise KafkaUnavailable(
                    f"the dev broker (pid {running['pid']}) runs but does not answer at "
                    f"{running['bootstrap']}; see `pipeline dev logs`, or `pipeline dev down` and up again"
                )
            return {**running, "already_running": True}
        java = require("java", "a Java 17+ runtime runs the broker (apt-get install openjdk-17-jre-headless)")
        ports = [self.port, self.controller_port] + ([self.port + 2] if self.sasl else [])
        if any(port_in_use(p) for p in ports):
            raise PipelineError(
                f"one of the ports {ports} on 127.0.0.1 is taken by another process: "
                "stop it, or choose other ports with `pipeline dev up --port N` (uses N, N+1 and with --sasl N+2)."
            )
        sasl_user = None
        if self.sasl:
            sasl_user = (os.environ.get("KAFKA_USERNAME"), os.environ.get("KAFKA_PASSWORD"))
            if not all(sasl_user):
                raise PipelineError("--sasl needs the user for the SASL listener in KAFKA_USERNAME and KAFKA_PASSWORD")
        libs = fetch_jars(self.version)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(server_properties(
            self.data_dir, self.port, self.controller_port, self.port + 2 if self.sasl else None, sasl_user))
        self.config_file.chmod(0o600)  # it holds the dev SASL password
        classpath = f"{libs}/*"
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, classpath)
        started = time.monotonic()
        cmd = [
            java, *JVM_OPTS,
            f"-Dlog4j2.configurationFile={resource('log4j2.properties')}",
            f"-Dkafka.logs.dir={self.log_file.parent}",
            "-cp", classpath, "kafka.Kafka", str(self.config_file),
        ]
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        state = {
            "pid": proc.pid, "bootstrap": self.bootstrap, "port": self.port, "version": self.version,
            "home": str(self.home), "started_at": time.time(),
            "sasl_bootstrap": f"127.0.0.1:{self.port + 2}" if self.sasl else None,
        }
        self.state_file.write_text(json.dumps(state))
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not alive(proc.pid):
                raise KafkaUnavailable(f"the broker exited during start-up:\n{self.log_tail(25)}")
            if admin_ready(self.bootstrap, timeout=2):
                state["ready_seconds"] = round(time.monotonic() - started, 2)
                self.state_file.write_text(json.dumps(state))
                return {**state, "already_running": False}
            time.sleep(0.5)
        raise KafkaUnavailable(
            f"the broker did not answer at {self.bootstrap} within {timeout:.0f}s "
            f"(it is still starting, pid {proc.pid}; `pipeline dev down` stops it):\n{self.log_tail(25)}"
        )

    def _format(self, java: str, classpath: str) -> None:
        tool = [java, "-Xmx256m", "-cp", classpath, "kafka.tools.StorageTool"]
        cluster_id = subprocess.run([*tool, "random-uuid"], capture_output=True, text=True, check=True)
        done = subprocess.run(
            [*tool, "format", "-t", cluster_id.stdout.strip(), "-c", str(self.config_file), "-g"],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise PipelineError(f"formatting the broker's storage failed:\n{done.stdout}{done.stderr}")

    def down(self, timeout: float = 30.0) -> int | None:
        """Stop the broker this tool started (by its recorded pid); return that pid, or None if none ran."""
        state = self.state()
        self.state_file.unlink(missing_ok=True)
        if state is None:
            return None
        pid = state["pid"]
        stop_pid(pid, timeout)
        return pid

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_file, lines)
