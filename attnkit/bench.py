"""Small built-in benchmarks (``attnkit bench NAME``); the side-by-side ones live in benchmarks/."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import time
from pathlib import Path

import torch


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generation(quick: bool = False) -> dict:
    """Greedy decoding tokens/s of a TransformerLM with the KV cache and without it (recomputing the
    whole prefix at every step), same tokens."""
    from .generation import generate
    from .models import TransformerLM, TransformerLMConfig

    torch.manual_seed(0)
    n_new, prompt_len = (32, 16) if quick else (256, 64)
    config = TransformerLMConfig(vocab_size=256, d_model=256, n_heads=4, n_layers=4, d_ff=1024,
                                 max_len=prompt_len + n_new, dropout=0.0)
    model = TransformerLM(config).eval()
    prompt = torch.randint(0, 256, (1, prompt_len))

    def no_cache_step(tokens, history):
        seq = tokens if history is None else torch.cat([history, tokens], 1)
        return model(seq)[:, -tokens.shape[1]:], seq

    results = {}
    with torch.inference_mode():
        cached = model.generate(prompt, n_new)
        uncached = generate(no_cache_step, prompt, n_new)
        t_cache = _median_time(lambda: model.generate(prompt, n_new), 3)
        t_full = _median_time(lambda: generate(no_cache_step, prompt, n_new), 3)
    results["same_tokens"] = bool(torch.equal(cached, uncached))
    results["tokens_per_s_with_cache"] = n_new / t_cache
    results["tokens_per_s_without_cache"] = n_new / t_full
    results["speedup"] = t_full / t_cache
    results["setting"] = f"TransformerLM d_model 256, 4 layers, prompt {prompt_len}, {n_new} new tokens, greedy"
    return results


def attention(quick: bool = False) -> dict:
    """Forward+backward of causal dot-product attention: the reference formula vs SDPA."""
    from .functional import dot_product_attention

    T = 512 if quick else 2048
    q, k, v = (torch.randn(1, 8, T, 64, requires_grad=True) for _ in range(3))

    def run(impl):
        out = dot_product_attention(q, k, v, causal=True, impl=impl)
        out.sum().backward()

    t_ref = _median_time(lambda: run("reference"), 3)
    t_sdpa = _median_time(lambda: run("sdpa"), 3)
    return {"T": T, "reference_s": t_ref, "sdpa_s": t_sdpa, "speedup": t_ref / t_sdpa}


BENCHMARKS = {"generation": generation, "attention": attention}


# ----------------------------------------------------------------------------------------------------
# Provenance: what every results file records about how it was made


def git_commit(repo: str | Path = ".") -> str:
    """Short hash of HEAD, with "-dirty" when tracked files differ from it; "unknown" outside git.
    ``$ATTNKIT_COMMIT``, when set, names it instead (a copy of the tree without its history, e.g. on a
    machine lent for GPU runs)."""
    if os.environ.get("ATTNKIT_COMMIT"):
        return os.environ["ATTNKIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if changes else "")


def version(dist: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(script: str | Path, argv: list[str], packages: tuple[str, ...] = ("torch",)) -> dict:
    """The command (the script relative to the working folder, and its arguments), the commit of the script's
    repository, the versions of Python and ``packages``, the CPU and the load average before the run (add
    ``load_after`` at the end)."""
    return {
        "command": shlex.join(["python", os.path.relpath(script), *argv]),
        "commit": git_commit(Path(script).resolve().parent),
        "python": platform.python_version(),
        **{dist.replace("-", "_"): version(dist) for dist in packages},
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_before": list(os.getloadavg()),
    }


def write_results(out: str | Path, meta: dict, rows: list, render) -> str:
    """Finish a benchmark's results: ``meta["load_after"]`` set, ``out``.json ({meta, rows}) and ``out``.md
    (``render(meta, rows)``) written; returns the markdown."""
    meta["load_after"] = list(os.getloadavg())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = render(meta, rows)
    out.with_suffix(".md").write_text(text)
    return text


def record_runs(path: str | Path, results: dict, mine: dict) -> None:
    """Write an experiment's results JSON after each run: the runs other processes recorded in ``path``
    meanwhile are kept, ``mine`` (this process's runs, by key) replace theirs."""
    path = Path(path)
    if path.exists():
        results["runs"] = json.loads(path.read_text())["runs"]
    results["runs"].update(mine)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
