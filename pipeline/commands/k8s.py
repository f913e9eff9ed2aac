"""`pipeline k8s`: render the manifests that follow topics.yaml, validate k8s/ offline, build the image and play
the manifests on one machine with podman."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.deploy import image as k8s_image
from pipeline.deploy import play as k8s_play
from pipeline.deploy import render as k8s
from pipeline.deploy import validate as k8s_validate
from pipeline.kafka import admin
from pipeline.commands.context import console, settings
from pipeline.config import DEFAULT_CONFIG

app = typer.Typer(help="Kubernetes: render the manifests that follow topics.yaml; validate k8s/ offline; build the "
                       "image and play the manifests on this machine with podman.",
                  no_args_is_help=True)


def _topology_path(ctx: typer.Context) -> Path:
    return Path(settings(ctx).config or os.environ.get("PIPELINE_CONFIG") or DEFAULT_CONFIG)


@app.command()
def render(
    ctx: typer.Context,
    out: Path = typer.Option(None, help="Folder to write (default: k8s/base/generated next to topics.yaml)."),
    cluster: Path = typer.Option(None, help="The cluster's changes to topics.yaml, a partial topics.yaml "
                                            "(default: k8s/base/cluster.topics.yaml next to topics.yaml)."),
    check: bool = typer.Option(False, "--check", help="Change nothing; exit 1 if the folder differs from a render."),
) -> None:
    """Write the cluster's topics.yaml and schemas (a ConfigMap), a Strimzi KafkaTopic per topic, and per stage a
    Deployment and a KEDA ScaledObject (and so per bridge); the same topics.yaml always gives the same files."""
    path = _topology_path(ctx)
    root = path.resolve().parent
    out = out or root / "k8s" / "base" / "generated"
    files = k8s.render(path, cluster or root / "k8s" / "base" / "cluster.topics.yaml")
    if check:
        stale = k8s.differences(files, out)
        for name in stale:
            console.print(f"[red]differs:[/] {escape(str(out / name))}", highlight=False)
        if stale:
            console.print(f"{len(stale)} file(s) differ from what `pipeline k8s render` writes: run it and commit")
            raise typer.Exit(1)
        console.print(f"[green]up to date:[/] {out} ({len(files)} files)")
        return
    changed = k8s.write(files, out)
    console.print(f"wrote {out}: {len(changed)} file(s) changed" if changed
                  else f"[green]up to date:[/] {out} ({len(files)} files)")


@app.command()
def validate(
    ctx: typer.Context,
    folder: Path = typer.Argument(None, help="Folder of manifests (default: k8s next to topics.yaml)."),
    k8s_version: str = typer.Option(k8s_validate.DEFAULT_K8S_VERSION, help="Kubernetes version of the core schemas."),
    build: bool = typer.Option(True, help="Also build each kustomization (kustomize or kubectl, when installed) "
                                          "and check its output."),
) -> None:
    """Check every manifest under the folder offline: core kinds with kubernetes-validate, KEDA and Strimzi kinds
    against the CRD schemas in FOLDER/schemas, and that each kustomization's files exist; then the output of each
    kustomization, patches applied. Exit 1 on a problem."""
    folder = folder or _topology_path(ctx).resolve().parent / "k8s"
    reports = [("file(s)", k8s_validate.validate_tree(folder, k8s_version))]
    command = k8s_validate.kustomize_command() if build else None
    if command:
        reports.append((f"kustomization(s) built with `{' '.join(command)}`",
                        k8s_validate.validate_builds(folder, command, k8s_version)))
    elif build:
        console.print("[yellow]neither kustomize nor kubectl found: kustomization output not checked[/]")
    problems = [p for _, report in reports for p in report.problems]
    for problem in problems:
        console.print(f"[red]error:[/] {escape(str(problem))}", highlight=False)
    summary = "; ".join(f"{r.documents} object(s) in {r.files} {what}" for what, r in reports) + f" under {folder}"
    if problems:
        console.print(f"{len(problems)} problem(s): {summary}")
        raise typer.Exit(1)
    console.print(f"[green]valid:[/] {summary} (Kubernetes {k8s_version})")


@app.command()
def image(
    ctx: typer.Context,
    variant: str = typer.Option("cpu", help="cpu or cuda (the CUDA torch, for the embed stage on a GPU)."),
    tag: str = typer.Option(None, help=f"Image name (default: {k8s_image.IMAGE}:VARIANT, what k8s/overlays/local "
                                       "plays)."),
    torch_index: str = typer.Option(None, help="PyPI-style index for torch (default: the Dockerfile's, or the host "
                                               "pip's index when download.pytorch.org is unreachable)."),
    force: bool = typer.Option(False, "--force", help="Build even when the image was built from the same files."),
) -> None:
    """Build the Dockerfile with podman. The base image is pulled, or when no registry answers, built from the
    Debian archive apt uses here (debootstrap); the host pip's index and CA settings go to the build's pip.
    An image built from the same files and arguments is kept (its label says so); after a code change only the
    project's layers are built again."""
    root = _topology_path(ctx).resolve().parent
    with console.status(f"building {tag or f'{k8s_image.IMAGE}:{variant}'} ...") as status:
        built = k8s_image.build(root, variant, tag, torch_index, say=lambda text: console.print(escape(text)),
                                step=lambda line: status.update(escape(line[:110])), force=force)
    how = "built from the same files before" if built.up_to_date else \
        f"{built.from_cache} of {built.steps} steps from the layer cache"
    console.print(f"[green]{'up to date' if built.up_to_date else 'built'}:[/] {built.tag} in {built.seconds:.0f} s "
                  f"({how}; {built.size / 1e9:.2f} GB; base image {built.base})", highlight=False)


@app.command()
def play(
    ctx: typer.Context,
    overlay: Path = typer.Option(None, help="Kustomize overlay for one machine (default: k8s/overlays/local next to "
                                            "topics.yaml)."),
    wait: bool = typer.Option(True, help="Wait until every pod's /ready answers 200."),
    timeout: float = typer.Option(300, help="Seconds to wait for readiness."),
) -> None:
    """Run the rendered manifests with `podman kube play`: the overlay's generated/ rendered again from
    topics.yaml, topics created, then every Deployment as on a cluster (uid 10001, read-only root, emptyDir home
    and tmp, the topology ConfigMap, the store's claim), on the host's network. The broker is the overlay's
    (127.0.0.1:9092, `pipeline dev up`) unless --bootstrap or KAFKA_BOOTSTRAP names another; the gateway runs
    while its NATS (the overlay's 127.0.0.1:4222, or NATS_URL) answers. Objects podman
    cannot run (KEDA, Strimzi, Services) are listed with what stands in for them."""
    the_settings = settings(ctx)
    the_plan = k8s_play.rendered_plan(_topology_path(ctx), the_settings.bootstrap or os.environ.get("KAFKA_BOOTSTRAP"),
                                      overlay, os.environ.get("NATS_URL"))
    missing = [name for name in _images(the_plan) if not k8s_image.image_exists(name)]
    if missing:
        console.print(f"[red]image {', '.join(missing)} not found:[/] build it with `pipeline k8s image`")
        raise typer.Exit(1)
    topology = the_plan.topology
    assert topology is not None
    created = admin.create_missing(topology)
    console.print(f"topics: {len(created)} created, {len(topology.topics)} declared ({topology.kafka.bootstrap})")
    table = Table("kind", "name", "not played: what stands in here", title="left out")
    groups: dict[tuple[str, str], list[str]] = {}
    for kind, name, why in the_plan.left_out:
        groups.setdefault((kind, why), []).append(name)
    for (kind, why), names in groups.items():
        table.add_row(kind, ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else ""), why)
    if the_plan.left_out:
        console.print(table)
    path = k8s_play.play(the_plan)
    console.print(f"played {len(the_plan.docs)} object(s) from {path}: "
                  + ", ".join(w.container for w in the_plan.workloads), highlight=False)
    if not wait:
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("pods ready", total=len(the_plan.workloads))
        k8s_play.wait_ready(the_plan.workloads, timeout, lambda waiting: progress.update(
            task, completed=len(the_plan.workloads) - len(waiting),
            description=f"pods ready (waiting: {', '.join(w.deployment for w in waiting)})" if waiting else "ready"))
    console.print(f"[green]ready:[/] {len(the_plan.workloads)} pod(s); `podman ps`, `podman logs NAME`, "
                  "`pipeline status`; `pipeline k8s down` stops them", highlight=False)


def _images(the_plan: k8s_play.PlayPlan) -> list[str]:
    return sorted({c["image"] for d in the_plan.docs if d["kind"] == "Deployment"
                   for c in d["spec"]["template"]["spec"]["containers"]})


@app.command()
def down(
    volumes: bool = typer.Option(False, "--volumes", help="Also remove the claims' volumes (the store's data)."),
) -> None:
    """Stop what `pipeline k8s play` started as a cluster does (SIGTERM, then SIGKILL after the pod's grace
    period), show each container's exit code, and remove the pods. Exit 1 if any stage did not exit 0."""
    stopped = k8s_play.down(keep_volumes=not volumes)
    table = Table("container", "exit code", "stopped in", "grace", title="stopped")
    for s in stopped:
        table.add_row(s.container, str(s.exit_code), f"{s.seconds:.1f} s", f"{s.grace} s",
                      style="" if s.exit_code == 0 else "red")
    console.print(table)
    if any(s.exit_code != 0 for s in stopped):
        raise typer.Exit(1)
