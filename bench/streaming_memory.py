"""Peak memory of one unit against the input set's size: the streamed pass (the runner's way
since issue 9) next to the whole-input-set capture it replaced, same model, same analyses.

    python bench/streaming_memory.py                      # CPU, 4k..131k tokens
    python bench/streaming_memory.py --smoke              # tiny, for the CI smoke test
    python bench/streaming_memory.py --device cuda --tokens 16384 65536 262144 --hidden 1024

Each (mode, tokens) runs in a fresh process; the figure is the peak beyond what the process
held once the model was loaded (CPU: peak RSS; CUDA: max_memory_allocated), so it is the
pass, the captures and the analyses' states. Every analysis that reads the pass runs, with
CKA against the checkpoint itself.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, table

STREAMED = {
    "saturation": {},
    "anisotropy": {},
    "dispersion": {"layers": "all"},
    "linearity": {},
    "logit_lens": {},
    "head_rank_proxy": {"ranks": [8, 64]},
    "intrinsic_dimension": {"max_points": 2000},
    "neuron_entropy": {},
    "cka": {"max_tokens": 4096},
    "singular_entropy": {},
}


def build_checkpoint(folder: Path, hidden: int, layers: int, vocab: int) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from ckptlab.pico.build import train_tokenizer

    config = GPTNeoXConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        vocab_size=vocab,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    train_tokenizer(["def f(x): return x + 1"] * 20).save_pretrained(folder)


def peak_bytes(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one(args) -> dict:
    """One (mode, tokens) measurement, in this process."""
    from ckptlab.analyses.capture import ReferenceSketch, sample_positions, sketch_hidden_states
    from ckptlab.analyses.registry import get_analysis
    from ckptlab.hub import content_commit_id, load_model, load_tokenizer
    from ckptlab.orchestrator.checkpoints import CheckpointRef
    from ckptlab.orchestrator.forward import capture_forward
    from ckptlab.orchestrator.plan import Cell, SketchRequest
    from ckptlab.orchestrator.unit import UnitTask
    from ckptlab.orchestrator.worker import run_unit

    folder = Path(args.folder)
    n_tokens = args.tokens[0]
    seq = n_tokens // args.seq_len
    tokens = np.random.default_rng(0).integers(0, args.vocab, size=(seq, args.seq_len))
    names = list(STREAMED)
    cells = [
        Cell(
            f"k-{n}",
            n,
            n,
            1,
            json.dumps(get_analysis(n).params_model(**STREAMED[n]).model_dump(mode="json")),
            "h",
            None if n == "singular_entropy" else "set",
            None if n == "singular_entropy" else "id",
            "sketch" if n == "cka" else None,
        )
        for n in names
    ]
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = load_model(folder, args.dtype, args.device)
    tokenizer = load_tokenizer(folder)
    base = torch.cuda.memory_allocated() if args.device == "cuda" else peak_bytes("cpu")
    started = time.perf_counter()
    if args.mode == "stream":
        del model
        task = UnitTask(
            CheckpointRef(str(folder.parent), folder.name, 0, "local", True),
            content_commit_id(folder),
            cells,
            {"set": tokens},
            None,
            args.dtype,
            args.batch_size,
            False,
            False,
            sketches=[SketchRequest("sketch", "set", "id", 4096, 0)],
        )
        result = run_unit(task, args.device)
        assert not result.failures, result.failures
        rows = len(result.metrics)
    else:  # the whole input set captured, then every analysis on it
        needs = set().union(*(get_analysis(n).needs for n in names))
        capture = capture_forward(
            model, torch.from_numpy(tokens), needs, args.batch_size, len(tokenizer)
        )
        positions = sample_positions(tokens.size, 4096, 0)
        capture.reference = ReferenceSketch(
            "c", "id", positions, sketch_hidden_states(capture.hidden_states, positions)
        )
        rows = 0
        for n in names:
            definition = get_analysis(n)
            rows += len(definition.run(capture, definition.params_model(**STREAMED[n])))
    seconds = time.perf_counter() - started
    return {
        "mode": args.mode,
        "tokens": n_tokens,
        "working_mib": round((peak_bytes(args.device) - base) / 2**20),
        "seconds": round(seconds, 2),
        "rows": rows,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--modes", nargs="+", default=["capture", "stream"])
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    return parser


SMOKE = ["--tokens", "512", "--seq-len", "128", "--hidden", "64", "--layers", "2"]


def run(smoke: bool = False, argv: list[str] | None = None) -> str:
    argv = list(argv or []) + (SMOKE if smoke else [])
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "step0"
        build_checkpoint(folder, args.hidden, args.layers, args.vocab)
        rows = []
        for n in args.tokens:
            cells = [f"{n:,}"]
            for mode in args.modes:
                child = [sys.executable, __file__, *argv, "--folder", str(folder)]
                child += ["--mode", mode, "--tokens", str(n)]
                done = subprocess.run(child, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    cells += ["failed", done.stderr.strip().splitlines()[-1][:60]]
                    continue
                figure = json.loads(done.stdout.strip().splitlines()[-1])
                cells += [f"{figure['working_mib']:,}", f"{figure['seconds']:.1f}"]
            rows.append(cells)
    command = "python bench/streaming_memory.py" + (" --smoke" if smoke else "")
    headers = ["tokens"] + [f"{m} {unit}" for m in args.modes for unit in ("MiB", "s")]
    return "\n\n".join(
        [
            "## Streaming: peak memory against the input set's size",
            provenance(command),
            "One unit over N tokens with every analysis that reads the pass (saturation, "
            "anisotropy, dispersion per layer, linearity, logit lens, head-rank proxy r = 8, 64, "
            "TwoNN on 2,000 points, neuron entropy, CKA on 4,096 positions against the "
            "checkpoint itself, plus singular entropy), on a GPT-NeoX with random weights "
            f"(d_model {args.hidden}, {args.layers} layers, d_mlp {4 * args.hidden}, vocab "
            f"{args.vocab}, {args.dtype} on {args.device}, batches of {args.batch_size} x "
            f"{args.seq_len} tokens). *capture* = the whole input set captured, then each "
            "analysis on it (the runner's way before issue 9); *stream* = the runner's streamed "
            "pass (`run_unit`). MiB = peak RSS (CUDA: max_memory_allocated) beyond the process' "
            "own with the model loaded, each (mode, N) in a fresh process.",
            table(headers, rows),
        ]
    )


def main() -> None:
    args, _ = _parser().parse_known_args()
    if args.mode:  # a child process: one measurement
        print(json.dumps(one(args)))
        return
    print(run(args.smoke, [a for a in sys.argv[1:] if a != "--smoke"]))


if __name__ == "__main__":
    main()
