"""`pipeline delete`: tombstones (null values keyed by id) on an ingest topic, for stages that accept them."""

from __future__ import annotations

import typer
from rich.markup import escape

from pipeline.commands.context import console, settings
from pipeline.errors import PipelineError
from pipeline.kafka.sender import Sender
from pipeline.runtime.stage import stage_class


def delete(
    ctx: typer.Context,
    doc_ids: list[str] = typer.Argument(..., help="Ids of the documents to delete."),
    topic: str = typer.Option(None, "--topic", "-t", help="Ingest topic (default: the topology's only one)."),
) -> None:
    """Produce a tombstone (a null value keyed by the id) per document to the ingest topic (acks=all); the stages
    forward it and the store deletes every passage of the document. A replay of the topic deletes it again."""
    topology = settings(ctx).topology()
    if topic is None:
        found = topology.ingest_topics()
        if len(found) != 1:
            raise PipelineError(f"the topology has {len(found)} ingest topics ({', '.join(found) or 'none'}): "
                                "name one with --topic")
        topic = found[0]
    topology.topic(topic)
    readers = [name for name, spec in topology.stages.items() if spec.input == topic]
    refusing = [name for name in readers if not stage_class(topology, name).accepts_tombstones]
    if not readers or refusing:
        raise PipelineError(f"no tombstones sent: stage(s) {', '.join(refusing) or '(none)'} reading {topic} do not "
                            "accept them (Stage.accepts_tombstones) and would dead-letter them as empty-value")
    sender = Sender(topology)
    for doc_id in doc_ids:
        sender.send(topic, None, doc_id.encode())
    barrier = sender.flush(30)
    if not barrier.ok:
        errors = "; ".join(str(f) for f in barrier.failures[:3])
        raise PipelineError(f"{barrier.unacked} tombstone(s) unacknowledged, {len(barrier.failures)} failed: {errors}")
    console.print(f"sent {len(doc_ids)} delete(s) to {escape(topic)}: {escape(', '.join(doc_ids))}", highlight=False)
