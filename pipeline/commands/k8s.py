"""`pipeline k8s`: render the manifests that must agree with topics.yaml, and validate k8s/ offline."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape

from pipeline.deploy import render as k8s
from pipeline.deploy import validate as k8s_validate
from pipeline.commands.context import console, settings
from pipeline.config import DEFAULT_CONFIG

app = typer.Typer(help="Kubernetes: render the manifests that follow topics.yaml; validate k8s/ offline.",
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
