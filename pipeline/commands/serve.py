"""`pipeline serve`: the online gateway, answering NATS requests with the stages' own code in-process."""

from __future__ import annotations

import typer

from pipeline.commands.context import console, settings

NATS_OPTION = typer.Option(None, "--nats", envvar="NATS_URL",
                           help="NATS server URL(s), comma-separated, instead of gateway.servers in topics.yaml.")


def serve(
    ctx: typer.Context,
    nats: str = NATS_OPTION,
    web_port: int = typer.Option(None, help="Serve /metrics, /healthz and /ready on this port instead of "
                                            "gateway.web_port."),
    loglevel: str = typer.Option("info", help="Log level: crit, error, warn, info or debug."),
) -> None:
    """Answer requests on PREFIX.embed, PREFIX.classify and PREFIX.search (the subjects of topics.yaml's gateway
    section) until Ctrl-C or SIGTERM. Replicas share the load in one NATS queue group; requests are
    micro-batched; each exchange is recorded to gateway.record_to."""
    from pipeline.gateway.server import gateway_settings, run_gateway  # here: nats loads only for this command

    topology = settings(ctx).topology()
    gateway = gateway_settings(topology)
    console.print(f"loading {', '.join(sorted({s.stage for s in gateway.subjects.values()}))} ... then serving "
                  f"{gateway.prefix}.{{{','.join(gateway.subjects)}}} on {nats or gateway.servers}")
    run_gateway(topology, nats, web_port, loglevel)
