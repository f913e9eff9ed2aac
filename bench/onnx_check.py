"""`python -m bench.onnx_check`: is ONNX Runtime (fp32, int8) a faithful and faster CPU backend than PyTorch?"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import corpus  # noqa: E402
from bench.harness import ROOT  # noqa: E402
from pipeline.config import load_topology  # noqa: E402
from stages.model import DEFAULT_MODEL, encode, load_model  # noqa: E402

console = Console()


def export(model, folder: Path) -> dict[str, Path]:
    """The model (transformer, mean pooling, normalisation) as ONNX fp32, and its int8 dynamic quantisation."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Pooled(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1)

    fp32, int8 = folder / "model.onnx", folder / "model-int8.onnx"
    dummy = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "vector": {0: "batch"}}
    torch.onnx.export(Pooled(model[0].auto_model.eval()), dummy, str(fp32), input_names=["input_ids", "attention_mask"],
                      output_names=["vector"], dynamic_axes=axes, opset_version=17, dynamo=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return {"onnx-fp32": fp32, "onnx-int8": int8}


def ort_encoder(path: Path, tokenizer, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(texts: list[str], batch_size: int) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # as sentence-transformers does
        out = np.zeros((len(texts), session.get_outputs()[0].shape[1] or 384), np.float32)
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            enc = tokenizer([texts[j] for j in rows], padding=True, truncation=True, max_length=256,
                            return_tensors="np")
            out[rows] = session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                           "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
        return out

    return run


def main(
    batch_size: int = typer.Option(8, help="Passages per forward pass (8 is PyTorch's best on 2 CPU cores)."),
    repeats: int = typer.Option(3, min=1, help="Timed runs per backend, interleaved; the best counts."),
    out: Path = typer.Option(ROOT / "bench" / "results", help="Folder for onnx.json."),
) -> None:
    """Vectors of the bundled sample by PyTorch and by ONNX Runtime: fidelity, search agreement and speed."""
    import torch

    topology = load_topology(ROOT / "topics.yaml")
    docs = [json.loads(line) for line in corpus.SAMPLE.read_text().splitlines() if line.strip()]
    texts = [p["text"] for p in corpus.passages(topology, docs)]
    queries = [d["text"].split(".")[0][:200] for d in docs[::6]]
    model = load_model(DEFAULT_MODEL, "cpu")
    backends = {"pytorch": lambda t, b: encode(model, t, batch_size=b)}
    with tempfile.TemporaryDirectory() as folder:
        with console.status("exporting the model to ONNX and quantising it ..."):
            for name, path in export(model, Path(folder)).items():
                backends[name] = ort_encoder(path, model.tokenizer, torch.get_num_threads())
        vectors = {name: run(texts, batch_size) for name, run in backends.items()}
        query_vectors = {name: run(queries, batch_size) for name, run in backends.items()}
        seconds = {name: [] for name in backends}
        for _ in range(repeats):
            for name, run in backends.items():
                started = time.perf_counter()
                run(texts, batch_size)
                seconds[name].append(time.perf_counter() - started)
    reference, ref_top = vectors["pytorch"], np.argsort(-(query_vectors["pytorch"] @ vectors["pytorch"].T), 1)[:, :5]
    results = {}
    for name in backends:
        cos = (vectors[name] * reference).sum(1)
        top = np.argsort(-(query_vectors[name] @ vectors[name].T), 1)[:, :5]
        results[name] = {
            "passages_per_s": len(texts) / min(seconds[name]), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "top5_overlap": float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top, ref_top)])),
            "top1_same": float(np.mean(top[:, 0] == ref_top[:, 0]))}
    base = results["pytorch"]["passages_per_s"]
    table = Table("backend", "passages/s", "speed-up", "cosine to PyTorch (mean / min)", "top-5 overlap", "top-1 same",
                  "faithful (mean cos ≥ 0.99)", title=f"{len(texts)} sample passages, batch {batch_size}, "
                  f"{len(queries)} search queries")
    for name, r in results.items():
        table.add_row(name, f"{r['passages_per_s']:.1f}", f"{r['passages_per_s'] / base:.2f}×",
                      f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f}", f"{r['top5_overlap']:.2f}",
                      f"{r['top1_same']:.2f}", "yes" if r["cosine_mean"] >= 0.99 else "[red]no[/]")
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "onnx.json").write_text(json.dumps({"batch_size": batch_size, "passages": len(texts),
                                               "queries": len(queries), "backends": results}, indent=2) + "\n")
    console.print(f"wrote {out / 'onnx.json'}")


if __name__ == "__main__":
    typer.run(main)
