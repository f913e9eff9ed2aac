"""Domain commands plugged into the `pipeline` CLI: search, and training the classifier head. They find the
embedding, classify and store stages by their class, never by their name in topics.yaml."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from pipeline.commands.context import console, settings
from pipeline.config import Topology
from pipeline.errors import PipelineError
from pipeline.runtime.routes import StageUnreachable, call_route
from pipeline.runtime.stage import find_stage, load_stage, stage_options
from stages.classifier import quality, train_head
from stages.classify import ClassifyStage
from stages.embed import EmbedStage
from stages.model import encode, load_model, model_id
from stages.store import StoreStage
from stages.vectorstore import parse_where

classifier_app = typer.Typer(help="Train and check the classify stage's trained head.", no_args_is_help=True)
collections_app = typer.Typer(help="The store's Qdrant collections (one per model) and the alias search uses.",
                              no_args_is_help=True)


def embed_stage(topology: Topology) -> str:
    """The name of the topology's embedding stage (an EmbedStage)."""
    return find_stage(topology, EmbedStage)


def store_stage(topology: Topology) -> str:
    """The name of the topology's store stage (a StoreStage)."""
    return find_stage(topology, StoreStage)


def classify_stage(topology: Topology) -> str:
    """The name of the topology's classify stage (a ClassifyStage)."""
    return find_stage(topology, ClassifyStage)


def embed_query(topology: Topology, texts: list[str]) -> np.ndarray:
    """Vectors from the running embed stage, or from the model loaded here when it does not run."""
    name = embed_stage(topology)
    try:
        return np.asarray(call_route(topology, name, "/embed", {"texts": texts})["vectors"], dtype=np.float32)
    except StageUnreachable:
        return encode(load_model(stage_options(topology, name).model), texts)


def store_call(topology: Topology, path: str, body: dict) -> dict:
    """Ask the running store stage (it holds Qdrant's local folder), else open Qdrant here and answer."""
    name = store_stage(topology)
    try:
        return call_route(topology, name, path, body)
    except StageUnreachable:
        stage = load_stage(topology, name)
        try:
            stage.setup()
        except PipelineError as exc:
            raise PipelineError(f"the store stage does not answer on its web port, and {exc}") from None
        try:
            return stage.routes()[path](body)
        except ValueError as exc:
            raise PipelineError(str(exc)) from None
        finally:
            stage.close()


def search_store(topology: Topology, body: dict) -> list[dict]:
    return store_call(topology, "/search", body)["hits"]


def search(
    ctx: typer.Context,
    query: str = typer.Argument(..., help="Text to search for."),
    label: str = typer.Option(None, "--label", "-l", help="Only passages with this label."),
    where: list[str] = typer.Option(None, "--where", "-w", help="Only passages whose payload field KEY has "
                                    "VALUE (KEY=VALUE, repeatable; metadata.lang=en reaches into metadata)."),
    k: int = typer.Option(5, "-k", min=1, help="How many hits."),
    collection: str = typer.Option(None, help="Collection or alias (default: the store stage's)."),
) -> None:
    """Embed the query with the pipeline's model and show the nearest stored passages, and how long it took."""
    try:
        conditions = parse_where(where or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--where") from None
    topology = settings(ctx).topology()
    started = time.perf_counter()
    vector = embed_query(topology, [query])[0]
    embedded = time.perf_counter()
    found = store_call(topology, "/search", {"vector": vector.tolist(), "k": k, "label": label,
                                             "where": conditions, "collection": collection})
    done = time.perf_counter()
    hits = found["hits"]
    caption = (f"embed {1000 * (embedded - started):.0f} ms, search {1000 * (done - embedded):.0f} ms "
               f"(vector store {found.get('took_ms', 0):.1f} ms)")
    table = Table("score", "label", "doc id", "passage", "snippet", title=f"search: {query}", caption=caption)
    for hit in hits:
        p = hit["payload"]
        snippet = p["text"][:90] + ("…" if len(p["text"]) > 90 else "")
        table.add_row(f"{hit['score']:.3f}", p["label"], escape(p["doc_id"]),
                      f"{p['passage_index'] + 1}/{p['passage_count']}", escape(snippet))
    console.print(table if hits else f"no hits (is anything stored yet?); {caption}")


@classifier_app.command()
def train(
    ctx: typer.Context,
    source: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON Lines with 'text' and 'label'."),
    out: Path = typer.Option(Path("var/classifier-head.npz"), help="Where to save the head."),
    folds: int = typer.Option(5, min=2, help="Cross-validation folds."),
) -> None:
    """Fit a softmax head on the embeddings of labelled texts; report cross-validated accuracy and macro-F1
    next to scikit-learn's LogisticRegression on the same embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    topology = settings(ctx).topology()
    classify = classify_stage(topology)
    name = stage_options(topology, classify).model
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    bad = [i + 1 for i, r in enumerate(rows) if not isinstance(r.get("text"), str) or not isinstance(r.get("label"), str)]
    if bad:
        raise PipelineError(f"{source}: lines {bad[:10]} lack a string 'text' or 'label'")
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    with console.status(f"embedding {len(texts)} texts with {name} ..."):
        vectors = encode(load_model(name), texts)
    mid = model_id(name)
    ours, theirs = [], []
    y = np.array(labels)
    for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=0).split(vectors, y):
        head = train_head(vectors[train_idx], list(y[train_idx]), mid)
        ours.append(quality(list(y[test_idx]), [head.labels[i] for i in head.scores(vectors[test_idx]).argmax(1)]))
        reference = LogisticRegression(max_iter=2000).fit(vectors[train_idx], y[train_idx])
        theirs.append(quality(list(y[test_idx]), list(reference.predict(vectors[test_idx]))))
    table = Table("classifier", "accuracy", "macro-F1", title=f"{folds}-fold cross-validation, {len(texts)} examples")
    for title, scores in (("this head (softmax, L-BFGS)", ours), ("scikit-learn LogisticRegression", theirs)):
        table.add_row(title, f"{np.mean([s['accuracy'] for s in scores]):.3f}",
                      f"{np.mean([s['macro_f1'] for s in scores]):.3f}")
    console.print(table)
    head = train_head(vectors, labels, mid)
    out.parent.mkdir(parents=True, exist_ok=True)
    head.save(out)
    console.print(f"saved {head.id} ({len(head.labels)} labels, {mid}) to {out}; use it with "
                  f"stages.{classify}.options: {{mode: trained, head: {out}}}")


@collections_app.command("list")
def list_collections(ctx: typer.Context) -> None:
    """Collections behind the store's alias, their sizes and HNSW index, and which one search uses."""
    found = store_call(settings(ctx).topology(), "/collections", {})
    table = Table("collection", "points", "in HNSW index", "alias", title=f"alias {found['alias']} -> {found['target']}")
    for c in found["collections"]:
        indexed = "?" if c.get("indexed") is None else str(c["indexed"])
        table.add_row(c["name"], str(c["points"]), indexed, found["alias"] if c["active"] else "",
                      style="bold" if c["active"] else "")
    console.print(table)
    if found.get("optimizing"):
        console.print("building an HNSW index now (searches go on; writes wait)")


@collections_app.command()
def promote(ctx: typer.Context, collection: str = typer.Argument(..., help="Collection to serve search from.")) -> None:
    """Switch the alias to COLLECTION atomically (search never sees a gap); the previous one stays intact."""
    done = store_call(settings(ctx).topology(), "/promote", {"collection": collection})
    console.print(f"alias {done['alias']}: {done['previous']} -> [bold]{done['target']}[/]")


@collections_app.command()
def optimize(ctx: typer.Context, timeout: float = typer.Option(3600, help="Seconds to wait for the index build.")) -> None:
    """Build the HNSW index of every collection behind the alias now (the store also does it when idle and after a
    backfill); searches go on meanwhile, exact until the index is ready."""
    topology = settings(ctx).topology()
    started = time.perf_counter()
    store_call(topology, "/optimize", {})
    deadline = time.monotonic() + timeout
    with console.status("building the HNSW index ..."):
        while True:
            found = store_call(topology, "/collections", {})
            if not found.get("optimizing"):
                break
            if time.monotonic() > deadline:
                raise PipelineError(f"the index build still runs after {timeout:.0f}s; see `pipeline collections list`")
            time.sleep(0.5)
    for c in found["collections"]:
        console.print(f"{escape(c['name'])}: {c['points']} points, {c.get('indexed', '?')} in the HNSW index")
    console.print(f"done in {time.perf_counter() - started:.1f}s")
