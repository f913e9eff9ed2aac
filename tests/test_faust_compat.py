"""The pinned broker works with faust-streaming + aiokafka: a Faust agent reads our Avro records and commits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from confluent_kafka import KafkaException, TopicPartition

from pipeline.kafka.clients import consumer
from tests.conftest import ROOT, run_cli

APP = textwrap.dedent('''
    import json, sys
    import faust
    from pipeline.config import load_topology
    from pipeline.avro.codecs import codec_for

    config, topic_name, group, out = sys.argv[1:5]
    sys.argv[1:5] = []
    topology = load_topology(config)
    codec = codec_for(topology, topic_name)
    app = faust.App(
        group, broker="kafka://" + topology.kafka.bootstrap, store="memory://", web_enabled=False,
        topic_disable_leader=True, topic_allow_declare=False, consumer_auto_offset_reset="earliest",
        datadir=out + ".faust", broker_commit_every=10, broker_commit_interval=0.5,
    )
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw", internal=False)

    @app.agent(topic)
    async def read(stream):
        async for batch in stream.noack_take(50, within=0.2):
            with open(out, "a") as f:
                for event in batch:
                    doc = codec.decode(event.value)
                    f.write(json.dumps([doc["doc_id"], event.message.partition, event.message.offset]) + "\\n")
            for event in batch:
                await stream.ack(event)

    if __name__ == "__main__":
        app.main()
''')


def test_faust_agent_reads_and_commits(topology, tmp_path: Path) -> None:
    path, topo = topology
    assert run_cli("-c", str(path), "topics", "apply").returncode == 0
    topic = next(n for n in topo.topics if n.endswith("docs.raw"))
    docs = [{"doc_id": f"f{i}", "text": f"text {i}"} for i in range(120)]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert run_cli("-c", str(path), "produce", "-t", topic, str(source)).returncode == 0

    script = tmp_path / "faust_app.py"
    script.write_text(APP)
    out = tmp_path / "seen.jsonl"
    group = f"{topic}.faust-check"
    worker = subprocess.Popen(
        [sys.executable, str(script), str(path), topic, group, str(out), "worker", "-l", "warn"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    probe = consumer(topo, group=group)
    partitions = [TopicPartition(topic, p) for p in range(topo.topic(topic).partitions)]
    ends = {p.partition: probe.get_watermark_offsets(p, timeout=10)[1] for p in partitions}
    try:
        deadline = time.monotonic() + 120
        committed: dict[int, int] = {}
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                committed = {tp.partition: tp.offset for tp in probe.committed(partitions, timeout=10)}
            except KafkaException:  # the group coordinator is still loading: ask again
                pass
            if committed == ends:
                break
            time.sleep(1)
    finally:
        worker.kill()
        output = worker.communicate()[0].decode(errors="replace")
        probe.close()
    assert committed == ends, f"committed {committed}, log end {ends}\n{output[-3000:]}"
    seen = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(s[0] for s in seen) == sorted(d["doc_id"] for d in docs)


def test_no_tables_manager_mirrors_fausts_start() -> None:
    """NoTablesManager is Faust's TableManager.on_start less its one-second sleep: if Faust's version changes,
    this fails so that the copy is looked at again."""
    import inspect

    from faust.tables import TableManager

    from pipeline.runtime.app import NoTablesManager

    body = [line.strip() for line in inspect.getsource(TableManager.on_start).splitlines()[2:]]
    ours = [line.strip() for line in inspect.getsource(NoTablesManager.on_start).splitlines()[1:]]
    assert body == ["await self.sleep(1.0)", *ours], body
