"""`python -m bench.gpu_report OUT/gpu.json`: add the machine (GPU, driver, torch, CUDA) to the GPU run's JSON
and write OUT/gpu.md, a section for bench/RESULTS.md."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import typer

from bench import parts  # noqa: F401  (registers the parts whose rows the section shows)
from bench.report import markdown
from bench.rows import all_rows


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        env["cudnn"] = torch.backends.cudnn.version()
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            env["driver"] = done.stdout.strip().splitlines()[0].split(",")[-1].strip()
    return env


def main(results: Path, broker_note: str = typer.Option("", help="Why no broker ran, if none did.")) -> None:
    data = json.loads(results.read_text())
    env = environment()
    data["environment"] = {**env, "broker": broker_note or "local broker"}
    results.write_text(json.dumps(data, indent=2, default=str) + "\n")
    meta = data["meta"]
    hardware = env.get("gpu", "no GPU") + (f" ({env['gpu_memory_gib']} GiB)" if "gpu_memory_gib" in env else "")
    lines = [
        f"## GPU run: {hardware}, {meta['date']}", "",
        f"- **Command:** `bash bench/gpu.sh` → `{meta['command']}`",
        f"- **Machine:** {meta['machine']}; driver {env.get('driver', 'n/a')}; torch {env['torch']}, "
        f"CUDA {env.get('cuda') or 'n/a'}, cuDNN {env.get('cudnn', 'n/a')}; Python {env['python']}.",
        f"- **Model:** {meta['model']} on {meta['device']}"
        f"{' in fp16' if meta['device'].startswith('cuda') else ''}; {meta['passages']} passages of "
        f"{meta['documents']} documents (seed {meta['seed']}).",
        "- **Kafka:** " + (f"none ({broker_note}): the embed stage ran in process (embed-inprocess)."
                           if broker_note else "a broker (the embed stage and the pipeline ran through it)."),
    ]
    if sweep := data.get("ceiling", {}).get("settings"):
        lines += ["", "Ceiling sweep (passages/s by token budget / batch cap):", "",
                  ", ".join(f"{name}: {s['passages_per_s']:,.0f}" for name, s in sweep.items())]
    lines += ["", markdown(all_rows(data))]
    out = results.with_suffix(".md")
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
