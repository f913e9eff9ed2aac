"""Kafka's own command-line tools (kafka-consumer-groups, kafka-topics, ...) run against the dev broker."""

from __future__ import annotations

from pathlib import Path

from pipeline.dev.broker import KAFKA_VERSION, fetch_jars, maven_fetch, require, resource
from pipeline.errors import PipelineError
from pipeline.paths import cache_home

# TOOL -> main class, as Kafka's bin/kafka-TOOL.sh scripts run them. All of these take --bootstrap-server.
TOOLS = {
    "acls": "org.apache.kafka.tools.AclCommand",
    "broker-api-versions": "org.apache.kafka.tools.BrokerApiVersionsCommand",
    "client-metrics": "org.apache.kafka.tools.ClientMetricsCommand",
    "cluster": "org.apache.kafka.tools.ClusterTool",
    "configs": "kafka.admin.ConfigCommand",
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "console-share-consumer": "org.apache.kafka.tools.consumer.ConsoleShareConsumer",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "delete-records": "org.apache.kafka.tools.DeleteRecordsCommand",
    "features": "org.apache.kafka.tools.FeatureCommand",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "groups": "org.apache.kafka.tools.GroupsCommand",
    "leader-election": "org.apache.kafka.tools.LeaderElectionCommand",
    "log-dirs": "org.apache.kafka.tools.LogDirsCommand",
    "metadata-quorum": "org.apache.kafka.tools.MetadataQuorumCommand",
    "reassign-partitions": "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
    "share-groups": "org.apache.kafka.tools.consumer.group.ShareGroupCommand",
    "streams-groups": "org.apache.kafka.tools.streams.StreamsGroupCommand",
    "topics": "org.apache.kafka.tools.TopicCommand",
    "transactions": "org.apache.kafka.tools.TransactionsCommand",
}
# Tools whose --bootstrap-server belongs after their subcommand (kafka-cluster cluster-id --bootstrap-server ...).
SUBCOMMAND_FIRST = {"cluster"}
# The heap Kafka's kafka-run-class.sh gives its tools (KAFKA_HEAP_OPTS).
TOOL_JVM_OPTS = ["-Xmx256m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]


def tools_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_home() / f"kafka-{version}" / "tools"


def tools_fetched(version: str = KAFKA_VERSION) -> bool:
    return (tools_dir(version) / ".complete").exists()


def fetch_tools(version: str = KAFKA_VERSION) -> Path:
    """org.apache.kafka:kafka-tools and its runtime closure, downloaded once through Maven next to the broker
    jars; only the jars the broker's folder lacks are kept (the tools run with both folders on the classpath)."""
    libs = fetch_jars(version)
    return maven_fetch(resource("kafka-tools-pom.xml"), tools_dir(version), version,
                       f"kafka-tools-{version}.jar", f"org.apache.kafka:kafka-tools:{version}",
                       skip={jar.name for jar in libs.glob("*.jar")})


def with_bootstrap(tool: str, args: list[str], bootstrap: str) -> list[str]:
    """ARGS with `--bootstrap-server BOOTSTRAP` where TOOL expects it, unless they name a server already."""
    if any(a.split("=", 1)[0] in ("--bootstrap-server", "--bootstrap-controller") for a in args):
        return args
    if tool in SUBCOMMAND_FIRST:
        if not args or args[0].startswith("-"):
            return args  # no subcommand: the tool prints its usage
        return [args[0], "--bootstrap-server", bootstrap, *args[1:]]
    return ["--bootstrap-server", bootstrap, *args]


def tool_command(tool: str, args: list[str], bootstrap: str, version: str = KAFKA_VERSION) -> list[str]:
    """The java command line that runs TOOL with ARGS against `bootstrap`; fetches the tools first if needed."""
    if tool not in TOOLS:
        raise PipelineError(f"unknown Kafka tool '{tool}'; choose one of: {', '.join(TOOLS)}")
    java = require("java", "a Java 17+ runtime runs Kafka's tools (apt-get install openjdk-17-jre-headless)", "")
    tools = fetch_tools(version)
    return [
        java, *TOOL_JVM_OPTS, f"-Dlog4j2.configurationFile={resource('tools-log4j2.properties')}",
        "-cp", f"{fetch_jars(version)}/*:{tools}/*", TOOLS[tool], *with_bootstrap(tool, args, bootstrap),
    ]
