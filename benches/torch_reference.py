#!/usr/bin/env python3
"""PyTorch + Hugging Face transformers reference for the easynlp-rs CPU benchmark.

Run with the python that benches/setup_torch.sh prints. Each subcommand prints human-readable
progress on stderr and exactly one JSON object on the last line of stdout:

  step         train or inference steps on a fixed random batch (examples/s, s/step)
  predict      tokenize + classify a TSV table in file order (rows/s, tokenization included)
  train-epoch  fine-tune one epoch on a TSV table, then dev accuracy

Tables are read like easynlp-rs reads them: UTF-8, an optional BOM, split on '\\n', one trailing
'\\r' stripped per line, a final empty line ignored, fields split on '\\t' (no CSV quoting), the
header skipped with --skip-first-line. Columns are 0-based indices, or header names when the
header is skipped.
"""
import argparse
import json
import math
import os
import resource
import sys
import time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def max_rss_mb():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads_env(threads):
    """Thread counts for OpenMP/MKL and the tokenizers' rayon pool; must precede the imports."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if threads > 1 else "false")


def import_stack(threads):
    set_threads_env(threads)
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    return torch, transformers


def load_model(torch, model_dir):
    from transformers import BertForSequenceClassification

    t0 = time.perf_counter()
    model = BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, attn_implementation="eager", dtype=torch.float32)
    model = model.float()
    log(f"loaded {model_dir}: {sum(p.numel() for p in model.parameters())} parameters, "
        f"attention {model.config._attn_implementation}, {time.perf_counter() - t0:.2f}s")
    return model


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    if not getattr(tok, "is_fast", False):
        raise SystemExit(f"{model_dir}: no fast tokenizer")
    return tok


# ---------------------------------------------------------------------------- tables

def read_table(path, skip_first_line):
    """Returns (header fields or None, [(line_number, fields)])."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SystemExit(f"{path}:{line}: the table is not valid UTF-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if text.endswith("\n") or text == "":
        lines.pop()
    lines = [(i + 1, l[:-1] if l.endswith("\r") else l) for i, l in enumerate(lines)]
    header = None
    if skip_first_line and lines:
        header = lines.pop(0)[1].split("\t")
    rows = [(n, l.split("\t")) for n, l in lines]
    if not rows:
        raise SystemExit(f"{path}: the table has no rows")
    return header, rows


def column_indices(spec, header, what):
    out = []
    for item in spec.split(","):
        item = item.strip()
        if item.isdigit():
            out.append(int(item))
        elif header is not None and item in header:
            out.append(header.index(item))
        else:
            known = f" (header: {', '.join(header)})" if header else " (no header: use 0-based indices)"
            raise SystemExit(f"{what}: unknown column '{item}'{known}")
    return out


def pick(rows, cols, path):
    width = max(cols) + 1
    out = []
    for n, fields in rows:
        if len(fields) < width:
            raise SystemExit(f"{path}:{n}: {len(fields)} fields, column {max(cols)} needed")
        out.append([fields[c] for c in cols])
    return out


def encode(tok, texts, padding, seq):
    """texts: list of [a] or [a, b] rows."""
    a = [t[0] for t in texts]
    b = [t[1] for t in texts] if len(texts[0]) > 1 else None
    return tok(a, b, padding=True if padding == "dynamic" else "max_length", truncation=True,
               max_length=seq, return_tensors="pt")


def autocast(torch, precision):
    """`torch.autocast('cpu', dtype=torch.bfloat16)` for --precision=bf16, else a no-op context."""
    import contextlib

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_inference(torch, model, tok, texts, padding, seq, batch, precision="f32"):
    """Classifies `texts` in file order; returns the predicted class of each row."""
    preds = []
    model.eval()
    with torch.inference_mode(), autocast(torch, precision):
        for i in range(0, len(texts), batch):
            enc = encode(tok, texts[i:i + batch], padding, seq)
            logits = model(**enc).logits
            preds.extend(logits.argmax(-1).tolist())
    return preds


# ---------------------------------------------------------------------------- subcommands

def cmd_step(args):
    torch, transformers = import_stack(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(torch, args.model)
    vocab = model.config.vocab_size
    ids = torch.randint(1000, vocab, (args.batch, args.seq), dtype=torch.long)
    ids[:, 0] = 101
    ids[:, -1] = 102
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    labels = torch.randint(0, 2, (args.batch,), dtype=torch.long)

    if args.mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, eps=1e-6, weight_decay=0.01)

        def one_step():
            opt.zero_grad(set_to_none=True)
            with autocast(torch, args.precision):
                out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return out.loss.item()
    else:
        model.eval()

        def one_step():
            with torch.inference_mode(), autocast(torch, args.precision):
                return float(model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[0, 0])

    for _ in range(args.warmup):
        one_step()
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        value = one_step()
        times.append(time.perf_counter() - t0)
        log(f"{args.mode} step {i + 1}/{args.steps}: {times[-1]:.3f}s ({'loss' if args.mode == 'train' else 'logit'} {value:.4f})")
    total = sum(times)
    return {
        "examples_per_s": args.batch * args.steps / total,
        "seconds_per_step": total / args.steps,
        "max_rss_mb": max_rss_mb(),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "mode": args.mode,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
    }


def cmd_predict(args):
    torch, transformers = import_stack(args.threads)
    torch.manual_seed(args.seed)
    header, rows = read_table(args.table, args.skip_first_line)
    texts = pick(rows, column_indices(args.text_cols, header, "--text-cols"), args.table)
    model = load_model(torch, args.model)
    tok = load_tokenizer(args.model)
    log(f"predict: {len(texts)} rows from {args.table}, batch {args.batch}, padding {args.padding}, seq {args.seq}")
    t0 = time.perf_counter()
    preds = run_inference(torch, model, tok, texts, args.padding, args.seq, args.batch, args.precision)
    seconds = time.perf_counter() - t0
    log(f"predict: {seconds:.3f}s, {sum(preds)} of {len(preds)} rows predicted class 1")
    return {
        "rows": len(texts),
        "seconds": seconds,
        "examples_per_s": len(texts) / seconds,
        "max_rss_mb": max_rss_mb(),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "torch": torch.__version__,
    }


def cmd_train_epoch(args):
    torch, transformers = import_stack(args.threads)
    import random

    from transformers import get_linear_schedule_with_warmup

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    label_names = args.labels.split(",")
    label_of = {name: i for i, name in enumerate(label_names)}

    def labelled(path, limit):
        header, rows = read_table(path, args.skip_first_line)
        if limit is not None:
            rows = rows[:limit]
        text_cols = column_indices(args.text_cols, header, "--text-cols")
        label_col = column_indices(args.label_col, header, "--label-col")[0]
        texts = pick(rows, text_cols, path)
        labels = []
        for (n, fields), value in zip(rows, pick(rows, [label_col], path)):
            if value[0] not in label_of:
                raise SystemExit(f"{path}:{n}: label '{value[0]}' is not one of {label_names}")
            labels.append(label_of[value[0]])
        return texts, labels

    train_texts, train_labels = labelled(args.table, args.rows)
    dev_texts, dev_labels = labelled(args.dev, None)
    model = load_model(torch, args.model)
    tok = load_tokenizer(args.model)

    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, eps=1e-6)
    steps = math.ceil(len(train_texts) / args.batch)
    warmup = int(args.warmup_proportion * steps)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)

    def collate(indices):
        enc = encode(tok, [train_texts[i] for i in indices], args.padding, args.seq)
        enc["labels"] = torch.tensor([train_labels[i] for i in indices], dtype=torch.long)
        return enc

    loader = torch.utils.data.DataLoader(range(len(train_texts)), batch_size=args.batch, shuffle=True,
                                         generator=gen, collate_fn=collate, num_workers=0)
    log(f"train-epoch: {len(train_texts)} rows, {steps} steps (warmup {warmup}), batch {args.batch}, "
        f"lr {args.lr}, padding {args.padding}, seq {args.seq}; dev {len(dev_texts)} rows")
    model.train()
    losses = []
    t0 = time.perf_counter()
    for step, batch in enumerate(loader, 1):
        opt.zero_grad(set_to_none=True)
        with autocast(torch, args.precision):
            out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        if step == steps or step % max(1, steps // 10) == 0:
            log(f"  step {step}/{steps}: loss {losses[-1]:.4f}, {time.perf_counter() - t0:.1f}s")
    seconds_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    preds = run_inference(torch, model, tok, dev_texts, args.padding, args.seq, args.batch, args.precision)
    seconds_eval = time.perf_counter() - t0
    accuracy = sum(int(p == y) for p, y in zip(preds, dev_labels)) / len(dev_labels)
    log(f"train-epoch: train {seconds_train:.2f}s, eval {seconds_eval:.2f}s, dev accuracy {accuracy:.4f}")
    return {
        "seconds_train": seconds_train,
        "seconds_eval": seconds_eval,
        "dev_accuracy": accuracy,
        "rows": len(train_texts),
        "dev_rows": len(dev_texts),
        "mean_train_loss": sum(losses) / len(losses),
        "max_rss_mb": max_rss_mb(),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------------------- CLI

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    default_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def common(sp):
        sp.add_argument("--model", required=True, help="Hugging Face BERT directory (config.json, weights, vocab)")
        sp.add_argument("--seq", type=int, default=128, help="sequence length (max length when tokenizing)")
        sp.add_argument("--batch", type=int, default=32)
        sp.add_argument("--threads", type=int, default=default_threads, help="torch/OpenMP/tokenizer threads")
        sp.add_argument("--seed", type=int, default=42)
        sp.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                        help="bf16: forward passes under torch.autocast('cpu', dtype=torch.bfloat16)")

    def table(sp):
        sp.add_argument("--table", required=True, help="TSV file")
        sp.add_argument("--text-cols", required=True,
                        help="text column(s), 0-based indices or header names: '0' or '3,4' (a sentence pair)")
        sp.add_argument("--skip-first-line", action="store_true", help="the first line is a header")
        sp.add_argument("--padding", choices=["dynamic", "max"], default="dynamic",
                        help="pad each batch to its longest row (dynamic) or to --seq (max)")

    s = sub.add_parser("step", help="timed train/inference steps on a fixed random batch")
    common(s)
    s.add_argument("--mode", choices=["train", "infer"], required=True)
    s.add_argument("--steps", type=int, default=3, help="timed steps")
    s.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    s.set_defaults(func=cmd_step)

    s = sub.add_parser("predict", help="tokenize and classify a table, timed")
    common(s)
    table(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("train-epoch", help="fine-tune one epoch, then dev accuracy")
    common(s)
    table(s)
    s.add_argument("--dev", required=True, help="dev TSV (same columns as --table)")
    s.add_argument("--label-col", required=True, help="label column, 0-based index or header name")
    s.add_argument("--labels", default="0,1", help="label values in class order")
    s.add_argument("--rows", type=int, default=None, help="train on the first N rows only")
    s.add_argument("--lr", type=float, default=3e-5)
    s.add_argument("--weight-decay", type=float, default=1e-4)
    s.add_argument("--warmup-proportion", type=float, default=0.1)
    s.set_defaults(func=cmd_train_epoch)

    args = p.parse_args(argv)
    # Only the JSON line goes to the real stdout: anything else printed (by Python code or by
    # native libraries writing to fd 1) is sent to stderr.
    json_out = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if args.threads < 1 or args.batch < 1 or args.seq < 2:
        p.error("--threads and --batch must be >= 1, --seq >= 2")
    if args.cmd == "step" and args.steps < 1:
        p.error("--steps must be >= 1")
    result = args.func(args)
    json_out.write(json.dumps(result) + "\n")
    json_out.flush()


if __name__ == "__main__":
    main()
