"""benchmarks/lsh_attention.py: row settings, provenance, units, spread and ratio lines (one tiny child run)."""

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "lsh_attention.py"
spec = importlib.util.spec_from_file_location("bench_lsh_attention", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def row(impl, length, time_s, rss, times=None, import_rss=0.2):
    return {
        "impl": impl, "length": length, "settings": bench.settings(impl, 8), "load_before": 1.0, "time_s": time_s,
        "times_s": times or [time_s], "cpu_s": time_s, "peak_rss_gb": rss, "import_rss_gb": import_rss,
    }


META = {
    "command": "python benchmarks/lsh_attention.py --batch 16", "commit": "abc1234-dirty", "python": "3.11.7",
    "torch": "2.13.0+cpu", "reformer_pytorch": "1.4.4", "transformers": "not installed", "cpu_model": "Some CPU",
    "cpu_count": 2, "threads": 2, "load_before": [1.0, 1.5, 2.0], "load_after": [1.2, 1.6, 2.0], "batch": 16,
    "heads": 4, "d_head": 64, "n_hashes": 4, "bucket_size": 64, "repeats": 3, "warmup": 1, "mmap_threshold": 0,
    "memory_unit": "GiB",
}


def test_every_impl_has_settings():
    for impl in bench.CHOICES:
        assert bench.settings(impl, 8)
    assert "reformer_pytorch_chunked" in bench.IMPLS
    assert bench.settings("reformer_pytorch_chunked", 4) == "attn_chunks=4, attend_across_buckets=False"
    assert "attend_across_buckets=True, attn_chunks=1" in bench.settings("reformer_pytorch", 8)


def test_markdown_header_table_and_ratios():
    rows = [
        row("attnkit", 4096, 2.85, 0.9, [2.80, 2.85, 2.91]),
        row("reformer_pytorch_chunked", 4096, 5.7, 1.8),
        row("sdpa", 4096, 2.0, 0.85),
        {"impl": "transformers", "length": 4096, "settings": bench.settings("transformers", 8), "load_before": 1.0,
         "skipped": "cannot import: x"},
    ]
    text = bench.markdown(rows, META)
    assert "Batch 16," in text and "Commit abc1234-dirty" in text and "transformers not installed" in text
    assert "Some CPU, 2 CPUs, 2 torch threads" in text and "1.00 / 1.50 / 2.00 before the run" in text
    assert "| peak RSS (GiB) | above import (GiB) |" in text and "| settings |" in text
    assert "| 1.80 | 1.60 | 2.0x | 2.0x; 2.3x |" in text  # reformer-pytorch: 1.6 / 0.7 above the import
    assert "| 2.85 (2.8-2.91) |" in text  # three significant digits
    assert "| attn_chunks=8, attend_across_buckets=False |" in text
    assert (
        "- 4,096 tokens: attnkit is 2.0x faster and 2.0x leaner in peak RSS, 2.3x leaner in the memory above the "
        "imported torch than reformer_pytorch_chunked (attn_chunks=8, attend_across_buckets=False)" in text
    )
    assert "attnkit is 1.4x slower and 1.1x heavier in peak RSS, 1.1x heavier in the memory above" in text
    old = bench.markdown([{k: v for k, v in r.items() if k != "import_rss_gb"} for r in rows[:2]], META)
    assert "attnkit is 2.0x faster and 2.0x leaner than reformer_pytorch_chunked" in old  # rows without it
    assert "than transformers" not in text  # skipped rows get no ratio line
    widths = {line.count("|") for line in text.splitlines() if line.startswith("|")}
    assert widths == {11}  # every table line has the same number of cells


def test_provenance_fields():
    meta = bench.provenance(["--lengths", "256"])
    assert meta["command"].endswith("lsh_attention.py --lengths 256")
    assert meta["commit"]
    assert meta["torch"] != "not installed"
    from attnkit.bench import version

    assert version("surely-not-an-installed-distribution") == "not installed"
    assert len(meta["load_before"]) == 3 and meta["cpu_count"] >= 1 and meta["cpu_model"]


def test_reformer_rows_use_their_settings():
    try:
        import reformer_pytorch  # noqa: F401
    except ImportError as e:
        pytest.skip(f"reformer-pytorch not importable: {e}")
    args = Namespace(d_model=32, heads=2, d_head=16, n_hashes=2, bucket_size=8, attn_chunks=8, length=64)
    default, _ = bench.build("reformer_pytorch", args)
    chunked, _ = bench.build("reformer_pytorch_chunked", args)
    assert (default.attn_chunks, default.lsh_attn._attend_across_buckets) == (1, True)
    assert (chunked.attn_chunks, chunked.lsh_attn._attend_across_buckets) == (8, False)


def test_attnkit_rows_force_the_path_they_name():
    args = Namespace(d_model=32, heads=2, d_head=16, n_hashes=2, bucket_size=8, attn_chunks=8, length=64)
    for impl, path in (("attnkit", "auto"), ("attnkit_chunked", "chunked"), ("attnkit_dense", "dense")):
        layer, _ = bench.build(impl, args)
        assert layer.impl == path and f"impl='{path}'" in bench.settings(impl, 8)


def test_tiny_run_writes_meta_and_rows(tmp_path):
    out = tmp_path / "lsh"
    bench.main([
        "--impls", "sdpa", "--lengths", "64", "--repeats", "2", "--warmup", "0", "--batch", "2",
        "--d-model", "32", "--heads", "2", "--d-head", "16", "--threads", "1", "--out", str(out),
    ])
    data = json.loads(out.with_suffix(".json").read_text())
    meta, rows = data["meta"], data["rows"]
    assert meta["memory_unit"] == "GiB" and meta["batch"] == 2 and len(meta["load_after"]) == 3
    assert rows[0]["settings"] == bench.settings("sdpa", 8) and len(rows[0]["times_s"]) == 2, rows
    assert "Batch 2," in out.with_suffix(".md").read_text()


def test_commit_can_be_named_where_the_tree_has_no_history(monkeypatch, tmp_path):
    from attnkit.bench import git_commit

    assert git_commit(tmp_path) == "unknown"  # no git repository there
    monkeypatch.setenv("ATTNKIT_COMMIT", "808d4e1")
    assert git_commit(tmp_path) == "808d4e1"


# ---------------------------------------------------------------------------------------------------
# benchmarks/duplication_step.py

DUP_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "duplication_step.py"
dup_spec = importlib.util.spec_from_file_location("bench_duplication_step", DUP_PATH)
dup = importlib.util.module_from_spec(dup_spec)
dup_spec.loader.exec_module(dup)


def test_duplication_batches_score_the_second_copy_only():
    import torch

    seq, targets = dup.batch(10, 3, torch.Generator().manual_seed(0))  # 0 w 0 w with |w| = 4
    assert seq.shape == targets.shape == (3, 10)
    assert torch.equal(seq[:, 1:5], seq[:, 6:]) and (seq[:, [0, 5]] == 0).all() and (seq[:, 1:5] > 0).all()
    assert (targets[:, :5] == -100).all() and (targets[:, -1] == -100).all()
    assert torch.equal(targets[:, 5:9], seq[:, 6:10])  # position t predicts token t + 1


def test_duplication_step_runs_both_models_and_reports_the_ratio(tmp_path, capsys):
    text = dup.main(["--lengths", "16", "--batch", "2", "--steps", "1", "--rounds", "2", "--threads", "1",
                     "--out", str(tmp_path / "d")])
    assert capsys.readouterr().out.startswith("    16 tokens: LSH-4 ")
    saved = json.loads((tmp_path / "d.json").read_text())
    (row,) = saved["rows"]
    assert len(row["lsh-4"]) == len(row["full"]) == 2 and len(row["ratios"]) == 2
    assert saved["meta"]["command"].startswith("python benchmarks/duplication_step.py --lengths 16")
    assert "| 16 | " in text and text.rstrip().endswith("|") and "alternate 2 times, 1 timed steps" in text
    with pytest.raises(SystemExit, match="--lengths must be even"):
        dup.main(["--lengths", "15", "--out", str(tmp_path / "e")])
