#!/usr/bin/env python3
"""The checks of scripts/gpu_check.sh (run that script; it sets the environment up).

`run` executes the steps below, each with its own time limit and one PASS / FAIL / SKIP line, then
prints one markdown table (also written to $OUT/gpu_check.md, else to the work folder) and exits
non-zero when a step failed. The other subcommands are the PyTorch workers `run` starts in child
processes, so that no torch / CUDA state is shared with the measured processes.

  step 0  the device: nvidia-smi, the CUDA libraries our binary links against, torch.cuda
  step 1  logits of a fixed minilm-l6 classifier (trained here a few steps by our binary) against
          transformers' BertForSequenceClassification on the same device, f32, TF32 off
  step 2  one epoch of minilm-l6 on the first 4,000 SST-2 rows, dev accuracy against the CPU
          figure stored in scripts/gpu_check_reference.json (within 1 point)
  step 3  training and inference examples/s at a fixed batch x sequence against PyTorch eager,
          f32 and bf16 autocast, for minilm-l6 and a BERT-base-shaped model of random weights
  step 4  2 MPI ranks on one GPU compute the update of 1 rank with twice the micro-batch (only
          when the binary links libmpi and `mpirun` is on the PATH)

With --dry-run everything runs on the CPU (our CPU binary, torch on the CPU) at reduced sizes, and
the device-specific parts are skipped with a line saying so.
"""
import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
REFERENCE = os.path.join(HERE, "gpu_check_reference.json")

# Per-step time limits in seconds (GPU run; the whole run must stay under 8 minutes) and for the
# dry run on a slow CPU.
LIMITS = {"gpu": {0: 60, 1: 90, 2: 120, 3: 170, 4: 50}, "dry": {0: 60, 1: 600, 2: 900, 3: 1800, 4: 600}}
# The logits bound of step 1 (f32 on both sides, TF32 off): see README, CUDA.
LOGITS_BOUND = 1e-3
# Step 2: the GPU accuracy must be within this of the CPU reference.
ACCURACY_POINTS = 0.01


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def say(msg):
    """A line of the check's own output (stdout)."""
    print(msg, flush=True)


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def env_float(name, default):
    v = os.environ.get(name, "")
    return float(v) if v.strip() else default


# ------------------------------------------------------------------------------ tables and files

def read_rows(path, skip_header):
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().lstrip("\ufeff").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if skip_header:
        lines = lines[1:]
    return [l[:-1] if l.endswith("\r") else l for l in lines]


def write_rows(path, rows):
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("".join(r + "\n" for r in rows))


def fixed_table(model_dir, rows, seq, path, seed=5):
    """A headerless `sent<TAB>label` table whose every row encodes to exactly `seq` tokens with
    [CLS] and [SEP]: `seq - 2` whole lower-case words of the model's vocabulary, each one token
    (the first 64 rows are checked with the model's tokenizer)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    with open(os.path.join(model_dir, "vocab.txt"), encoding="utf-8") as fh:
        vocab = [w.strip() for w in fh]
    words = [w for w in vocab[2000:] if re.fullmatch(r"[a-z]{3,10}", w)]
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        text = " ".join(rng.choices(words, k=seq - 2))
        if i < 64:
            n = len(tok.encode(text).ids)
            if n != seq:
                raise CheckFailed(f"fixed table: row {i} encodes to {n} tokens, not {seq}")
        out.append(f"{text}\t{rng.randrange(2)}")
    write_rows(path, out)
    return path


def sha256_short(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def git_commit():
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------------------ processes

class StepTimeout(Exception):
    pass


class Step:
    """One numbered check: a deadline, notes, and a PASS / FAIL / SKIP outcome."""

    def __init__(self, ctx, number, title):
        self.ctx, self.number, self.title = ctx, number, title
        limit = LIMITS["dry" if ctx.dry else "gpu"][number]
        limit = env_int(f"GPU_CHECK_LIMIT_{number}", limit)
        self.limit = max(1.0, min(limit, ctx.budget_left()))
        self.start = time.monotonic()
        self.notes = []
        say(f"\n== step {number}: {title} (time limit {self.limit:.0f}s)")

    def left(self):
        left = self.limit - (time.monotonic() - self.start)
        if left <= 0:
            raise StepTimeout(f"step {self.number} ran past its time limit of {self.limit:.0f}s")
        return left

    def elapsed(self):
        return time.monotonic() - self.start


def run_proc(step, cmd, log_path, env=None, cwd=None):
    """Runs `cmd` with stdout+stderr to `log_path`, within the step's time left. Returns
    (returncode, seconds, log text). The whole process group is killed on timeout."""
    left = step.left()
    t0 = time.monotonic()
    with open(log_path, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            rc = p.wait(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise StepTimeout(f"step {step.number} ran past its time limit of {step.limit:.0f}s "
                              f"(killed: {os.path.basename(log_path)})")
    secs = time.monotonic() - t0
    with open(log_path, errors="replace") as fh:
        text = fh.read()
    return rc, secs, text


def last_error(text):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    errs = [l for l in lines if "error" in l.lower() or "panicked" in l]
    return (errs or lines or ["(no output)"])[-1][:300]


class Context:
    def __init__(self, args):
        self.dry = args.dry_run
        self.easynlp = os.path.abspath(args.easynlp)
        self.shared = os.path.abspath(args.shared)
        self.python = sys.executable
        self.work = os.path.abspath(args.work)
        os.makedirs(self.work, exist_ok=True)
        self.logs = os.path.join(self.work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.out = os.environ.get("OUT") or None
        self.lib_path = os.environ.get("GPU_CHECK_LIB_PATH", "")
        self.started = time.monotonic()
        self.budget = env_float("GPU_CHECK_BUDGET_S", 470 if not self.dry else 3600)
        self.rows = []        # markdown rows: (step, case, ours, reference, bound/ratio, status)
        self.outcomes = []    # (step, title, status, detail)
        self.facts = {}
        self.n = 0
        self.model_l6 = os.path.join(self.shared, "models", "minilm-l6")
        self.model_l3 = os.path.join(self.shared, "models", "minilm-l3")
        self.sst2 = os.path.join(self.shared, "data", "glue-sst2")

    def budget_left(self):
        return self.budget - (time.monotonic() - self.started)

    def path(self, name):
        return os.path.join(self.work, name)

    def ours_env(self):
        env = dict(os.environ)
        if self.lib_path:
            env["LD_LIBRARY_PATH"] = self.lib_path + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        return env

    def ours(self, step, name, args):
        """Runs our binary; checks it ran on the GPU (or, dry, on the CPU). Returns (rc, s, log)."""
        self.n += 1
        log_path = os.path.join(self.logs, f"{self.n:02d}-{name}.log")
        rc, secs, text = run_proc(step, [self.easynlp] + args, log_path, env=self.ours_env())
        log(f"  ours {name}: exit {rc}, {secs:.1f}s ({log_path})")
        if rc == 0 and not self.dry and "running on CUDA GPU" not in text:
            raise CheckFailed(f"{name}: our binary did not run on a CUDA GPU ({last_error(text)}); see {log_path}")
        return rc, secs, text

    def ours_ok(self, step, name, args):
        rc, secs, text = self.ours(step, name, args)
        if rc != 0:
            raise CheckFailed(f"{name}: easynlp exited with {rc}: {last_error(text)}")
        return secs, text

    def torch(self, step, name, args):
        """Runs a torch worker subcommand of this file; returns its JSON (last stdout line)."""
        self.n += 1
        log_path = os.path.join(self.logs, f"{self.n:02d}-torch-{name}.log")
        json_path = log_path[:-4] + ".json"
        cmd = [self.python, os.path.abspath(__file__)] + args + ["--json-out", json_path]
        if self.dry:
            cmd.append("--cpu")
        rc, secs, text = run_proc(step, cmd, log_path)
        log(f"  torch {name}: exit {rc}, {secs:.1f}s ({log_path})")
        if rc != 0:
            raise CheckFailed(f"torch {name} exited with {rc}: {last_error(text)}")
        with open(json_path) as fh:
            result = json.load(fh)
        if "torch" in result and "transformers" in result and "torch" not in self.facts:
            self.facts["torch"] = {k: result.get(k) for k in ("torch", "transformers", "device_name")}
        return result


class CheckFailed(Exception):
    pass


def train_args(model, train, dev, ckpt, seq, batch, extra=(), do_eval=True, lr="3e-5", seed=42, logging_steps=None):
    a = ["--mode=train", "--app_name=text_classify", f"--tables={train},{dev}",
         "--input_schema=sent:str:1,label:str:1", "--first_sequence=sent", "--label_name=label",
         "--label_enumerate_values=0,1", f"--checkpoint_dir={ckpt}", f"--learning_rate={lr}",
         "--epoch_num=1", f"--random_seed={seed}", f"--sequence_length={seq}", f"--micro_batch_size={batch}"]
    if logging_steps:
        a.append(f"--logging_steps={logging_steps}")
    udp = f"pretrain_model_name_or_path={model}" + ("" if do_eval else " do_eval=False")
    a.append(f"--user_defined_parameters={udp}")
    return a + list(extra)


def predict_args(ckpt, table, out, seq, batch, schema="logits", extra=()):
    return ["--mode=predict", "--app_name=text_classify", f"--tables={table}", f"--outputs={out}",
            "--input_schema=sent:str:1,label:str:1", "--first_sequence=sent", f"--output_schema={schema}",
            f"--checkpoint_dir={ckpt}", f"--sequence_length={seq}", f"--micro_batch_size={batch}"] + list(extra)


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    return path


def train_metrics(ckpt):
    """(train records, eval records) of a run's log/metrics.jsonl."""
    recs = []
    with open(os.path.join(ckpt, "log", "metrics.jsonl")) as fh:
        for line in fh:
            if line.strip():
                recs.append(json.loads(line))
    return [r for r in recs if r.get("event") == "train"], [r for r in recs if r.get("event") != "train"]


def dev_accuracy(ckpt):
    for p in (os.path.join(ckpt, "latest", "trainer_state.json"), os.path.join(ckpt, "trainer_state.json")):
        if os.path.exists(p):
            with open(p) as fh:
                acc = json.load(fh).get("best_accuracy")
            if acc is not None:
                return float(acc)
    raise CheckFailed(f"{ckpt}: no best_accuracy in latest/trainer_state.json")


# ------------------------------------------------------------------------------ the steps

def step0_device(ctx):
    st = Step(ctx, 0, "device and libraries")
    if ctx.dry:
        say("SKIP step 0: dry run on the CPU: nvidia-smi, the CUDA libraries on LD_LIBRARY_PATH and "
            "torch.cuda are not checked; our binary and torch run on the CPU")
        ctx.outcomes.append((0, "device", "SKIP", "dry run"))
        return
    problems = []
    smi = shutil.which("nvidia-smi")
    if smi:
        rc, _, text = run_proc(st, [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               os.path.join(ctx.logs, "00-nvidia-smi.log"))
        gpu = text.splitlines()[-1].strip() if rc == 0 else ""
        if rc != 0 or not gpu:
            problems.append(f"nvidia-smi failed: {last_error(text)}")
        ctx.facts["gpu"] = gpu
        say(f"  GPU: {gpu}")
    else:
        problems.append("nvidia-smi not found")
    say(f"  CUDA libraries for easynlp (LD_LIBRARY_PATH): {ctx.lib_path or '(none found)'}")
    ldd = shutil.which("ldd")
    if ldd:
        rc, _, text = run_proc(st, [ldd, ctx.easynlp], os.path.join(ctx.logs, "00-ldd.log"), env=ctx.ours_env())
        missing = sorted({l.split()[0] for l in text.splitlines() if "not found" in l})
        if missing:
            problems.append(f"{ctx.easynlp} needs libraries that are not found: {', '.join(missing)}")
    with open(ctx.easynlp, "rb") as fh:
        blob = fh.read()
    if b"libcublas" not in blob:
        problems.append(f"{ctx.easynlp} does not link cuBLAS: not a `--features cuda` build")
    try:
        info = ctx.torch(st, "env", ["env"])
        ctx.facts["torch"] = info
        say(f"  torch {info['torch']} (CUDA {info.get('cuda')}), transformers {info['transformers']}, "
            f"device {info.get('device_name')}")
        if not info.get("cuda_available"):
            problems.append("torch.cuda.is_available() is False")
    except (CheckFailed, StepTimeout) as e:
        problems.append(f"torch: {e}")
    if problems:
        raise CheckFailed("; ".join(problems))
    ctx.outcomes.append((0, "device", "PASS", ctx.facts.get("gpu", "")))
    say(f"PASS step 0: {ctx.facts.get('gpu')}, binary {os.path.basename(ctx.easynlp)} links CUDA, torch sees the GPU")


def step1_logits(ctx):
    st = Step(ctx, 1, "logits against PyTorch (minilm-l6 classifier, f32)")
    d = ctx.dry
    rows, batch, dev_rows = (env_int("GPU_CHECK_LOGITS_TRAIN_ROWS", 32 if d else 256),
                             env_int("GPU_CHECK_LOGITS_BATCH", 16 if d else 32),
                             env_int("GPU_CHECK_LOGITS_DEV_ROWS", 64 if d else 320))
    seq = 128
    bound = env_float("GPU_CHECK_LOGITS_BOUND", LOGITS_BOUND)
    train = ctx.path("logits-train.tsv")
    dev = ctx.path("logits-dev.tsv")
    write_rows(train, read_rows(os.path.join(ctx.sst2, "train.tsv"), True)[:rows])
    write_rows(dev, read_rows(os.path.join(ctx.sst2, "dev.tsv"), True)[:dev_rows])
    ckpt = fresh(ctx.path("logits-ckpt"))
    # A fixed classifier: our binary, a few optimizer steps from minilm-l6 (seed 42), on the device.
    ctx.ours_ok(st, "logits-train", train_args(ctx.model_l6, train, dev, ckpt, seq, batch, extra=["--worker_gpu=1"],
                                                          do_eval=False, lr="2e-4"))
    out = ctx.path("logits-ours.tsv")
    ctx.ours_ok(st, "logits-predict", predict_args(ckpt, dev, out, seq, 32))
    r = ctx.torch(st, "logits", ["logits", "--ckpt", ckpt, "--table", dev, "--ours", out, "--seq", str(seq)])
    diff = r["max_abs_diff"]
    status = "PASS" if diff <= bound else "FAIL"
    where = "CPU (dry run)" if d else "GPU"
    detail = (f"{r['rows']} SST-2 dev rows, max |logit - torch| {diff:.2e} (bound {bound:g}), "
              f"argmax agrees on {r['argmax_agree']}/{r['rows']}, largest |logit| {r['max_abs_logit']:.2f}")
    ctx.rows.append((1, f"logits vs transformers, minilm-l6 classifier ({rows // batch} steps of ours), f32, {where}",
                     f"{diff:.2e}", f"{r['rows']} rows, torch {r['torch']}", f"<= {bound:g}", status))
    ctx.outcomes.append((1, "logits", status, detail))
    say(f"{status} step 1: {detail}")
    if status == "FAIL":
        raise CheckFailed(f"logits differ from PyTorch by {diff:.3e} > {bound:g}")


def step2_finetune(ctx):
    st = Step(ctx, 2, "fine-tune minilm-l6 on SST-2, dev accuracy against the CPU reference")
    d = ctx.dry
    rows = env_int("GPU_CHECK_FT_ROWS", 256 if d else 4000)
    dev_rows = env_int("GPU_CHECK_FT_DEV_ROWS", 128 if d else 0)  # 0: all 872
    seq, batch = 128, 32
    train = ctx.path("ft-train.tsv")
    dev = ctx.path("ft-dev.tsv")
    dev_all = read_rows(os.path.join(ctx.sst2, "dev.tsv"), True)
    write_rows(train, read_rows(os.path.join(ctx.sst2, "train.tsv"), True)[:rows])
    write_rows(dev, dev_all[:dev_rows] if dev_rows else dev_all)
    dev_n = dev_rows or len(dev_all)
    ckpt = fresh(ctx.path("ft-ckpt"))
    secs, _ = ctx.ours_ok(st, "finetune", train_args(ctx.model_l6, train, dev, ckpt, seq, batch,
                                                     extra=["--worker_gpu=1"], logging_steps=25))
    acc = dev_accuracy(ckpt)
    with open(REFERENCE) as fh:
        ref = json.load(fh)["finetune_cpu"]
    same = ref["rows"] == rows and ref["dev_rows"] == dev_n and ref["sequence_length"] == seq
    where = "CPU (dry run)" if d else "GPU"
    case = f"fine-tune minilm-l6, SST-2 first {rows} rows, 1 epoch, seq {seq}, batch {batch}, {where}: dev accuracy"
    if same:
        delta = acc - ref["dev_accuracy"]
        status = "PASS" if abs(delta) <= ACCURACY_POINTS + 1e-9 else "FAIL"
        detail = (f"dev accuracy {acc:.4f} vs CPU reference {ref['dev_accuracy']:.4f} ({delta * 100:+.2f} points, "
                  f"bound 1 point), {secs:.1f}s wall")
        ctx.rows.append((2, case, f"{acc:.4f} ({secs:.0f}s)", f"CPU {ref['dev_accuracy']:.4f}",
                         "within 1 point", status))
    else:
        status = "PASS"
        detail = (f"dev accuracy {acc:.4f} on {dev_n} rows, {secs:.1f}s wall; SKIP the comparison: the CPU reference "
                  f"is for {ref['rows']} rows / {ref['dev_rows']} dev rows (ran {rows} / {dev_n})")
        ctx.rows.append((2, case, f"{acc:.4f} ({secs:.0f}s)", f"reference is for {ref['rows']} rows", "-", "SKIP"))
    ctx.outcomes.append((2, "fine-tune", status, detail))
    say(f"{status} step 2: {detail}")
    if status == "FAIL":
        raise CheckFailed(f"dev accuracy {acc:.4f} is more than 1 point from the CPU reference {ref['dev_accuracy']:.4f}")


REFUSED = "lower precisions run on the CPU only"


def step3_speed(ctx):
    st = Step(ctx, 3, "speed at a fixed shape against PyTorch eager, f32 and bf16 autocast")
    d = ctx.dry
    batch = env_int("GPU_CHECK_BATCH", 8 if d else 32)
    seq = env_int("GPU_CHECK_SEQ", 64 if d else 128)
    log_steps = env_int("GPU_CHECK_TRAIN_LOG_STEPS", 1 if d else 5)
    windows = env_int("GPU_CHECK_TRAIN_WINDOWS", 3 if d else 4)
    infer_base = env_int("GPU_CHECK_INFER_BASE_BATCHES", 1 if d else 8)
    infer_more = env_int("GPU_CHECK_INFER_BATCHES", 4 if d else 64)
    infer_secs = env_float("GPU_CHECK_INFER_MIN_S", 0 if d else 2.0)
    torch_warmup = env_int("GPU_CHECK_TORCH_WARMUP", 1 if d else 3)
    torch_steps = env_int("GPU_CHECK_TORCH_STEPS", 2 if d else 20)
    torch_min_s = env_float("GPU_CHECK_TORCH_MIN_S", 0 if d else 1.0)
    precisions = [p for p in os.environ.get("GPU_CHECK_PRECISIONS", "f32,bf16").split(",") if p]
    # BERT-base's shape (the dry run a smaller stand-in, unless GPU_CHECK_BIG_SHAPE says otherwise).
    shape = os.environ.get("GPU_CHECK_BIG_SHAPE") or ("4,256,4,1024" if d else "12,768,12,3072")
    layers, hidden, heads, inter = (int(x) for x in shape.split(","))
    big_name = "BERT-base shape" if shape == "12,768,12,3072" else f"BERT L{layers} H{hidden} A{heads} I{inter}"
    models = [("minilm-l6", ctx.model_l6)]
    if os.environ.get("GPU_CHECK_MODELS", "") != "minilm-l6":
        big = fresh(ctx.path("bert-random"))
        ctx.torch(st, "make-model", ["make-model", "--like", ctx.model_l6, "--out", big, "--shape", shape])
        models.append((big_name + " (random weights)", big))
    train_rows = batch * log_steps * windows
    train_table = fixed_table(ctx.model_l6, train_rows, seq, ctx.path("fixed-train.tsv"))
    notes = []
    for name, mdir in models:
        tag = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        ours = {}
        ckpt_f32 = None
        for prec in precisions:
            flags = ["--worker_gpu=1"] + (["--use_amp"] if prec == "bf16" else [])
            # Training: one epoch of log_steps x windows batches; examples/s from the run's own log
            # lines (metrics.jsonl), median of the windows after the first (which holds start-up).
            ckpt = fresh(ctx.path(f"speed-{tag}-{prec}"))
            rc, _, text = ctx.ours(st, f"train-{tag}-{prec}",
                                   train_args(mdir, train_table, train_table, ckpt, seq, batch, extra=flags,
                                              do_eval=False, lr="1e-5", logging_steps=log_steps))
            if rc != 0:
                if prec != "f32" and REFUSED in text:
                    ours[("train", prec)] = "refused"
                    notes.append(f"ours {prec} on {name}: refused by this build ({last_error(text)})")
                    continue
                raise CheckFailed(f"train {name} {prec}: easynlp exited with {rc}: {last_error(text)}")
            recs, _ = train_metrics(ckpt)
            rates = [r["examples_per_sec"] for r in recs][1:] or [r["examples_per_sec"] for r in recs]
            ours[("train", prec)] = statistics.median(rates)
            if prec == "f32":
                ckpt_f32 = ckpt
        if ckpt_f32 is None:
            raise CheckFailed(f"no f32 checkpoint of {name} to predict with")
        for prec in precisions:
            flags = ["--worker_gpu=1"] + (["--use_amp"] if prec == "bf16" else [])
            rate, why = infer_rate(ctx, st, tag, prec, ckpt_f32, seq, batch, flags, infer_base, infer_more, infer_secs)
            if rate is None:
                ours[("infer", prec)] = "refused"
                notes.append(f"ours {prec} predict on {name}: refused by this build ({why})")
            elif rate == "noise":
                ours[("infer", prec)] = "within noise (dry run)"
                notes.append(f"ours {prec} predict on {name}: not timed, {why}")
            else:
                ours[("infer", prec)] = rate
        ref = ctx.torch(st, f"bench-{tag}", ["bench", "--model", mdir, "--batch", str(batch), "--seq", str(seq),
                                              "--precisions", ",".join(precisions), "--warmup", str(torch_warmup),
                                              "--steps", str(torch_steps), "--min-seconds", str(torch_min_s)])
        for mode in ("train", "infer"):
            for prec in precisions:
                mine = ours.get((mode, prec))
                theirs = ref["results"][f"{mode}-{prec}"]["examples_per_s"]
                if isinstance(mine, float):
                    cell, ratio = f"{mine:.1f}", f"{mine / theirs:.2f}x"
                else:
                    cell, ratio = mine if mine == "within noise (dry run)" else "refused by this build", "-"
                ptxt = "bf16 autocast" if prec == "bf16" else "f32"
                case = f"{name}, {mode}, {ptxt} (`--use_amp`), ex/s" if prec == "bf16" else f"{name}, {mode}, f32, ex/s"
                ctx.rows.append((3, f"{case} at {batch} x {seq}", cell, f"{theirs:.1f}", ratio, "-"))
    status = "PASS"
    detail = f"{len(models)} models x {len(precisions)} precisions x train/infer measured at {batch} x {seq}"
    if notes:
        detail += "; notes: " + "; ".join(notes)
    ctx.outcomes.append((3, "speed", status, detail))
    say(f"{status} step 3: {detail}")


def infer_rate(ctx, st, tag, prec, ckpt, seq, batch, flags, base, more, min_secs):
    """Our predict examples/s at the fixed shape: (rows2 - rows1) / (t2 - t1) of two whole runs of
    `--mode=predict` on base and base + more batches, so start-up (process, device, model load)
    cancels; each size runs twice and the faster run counts. When the difference is shorter than
    min_secs the larger run grows (once) to about that long. Returns (rate, None) or (None, why)."""
    def timed(n_batches):
        table = fixed_table(ctx.model_l6, n_batches * batch, seq, ctx.path(f"fixed-{n_batches}.tsv"), seed=9)
        best = None
        for rep in range(2):
            out = ctx.path(f"pred-{tag}-{prec}.tsv")
            rc, secs, text = ctx.ours(st, f"predict-{tag}-{prec}-{n_batches}b-{rep}",
                                      predict_args(ckpt, table, out, seq, batch, schema="predictions", extra=flags))
            if rc != 0:
                if prec != "f32" and REFUSED in text:
                    return None, last_error(text)
                raise CheckFailed(f"predict {tag} {prec}: easynlp exited with {rc}: {last_error(text)}")
            best = secs if best is None else min(best, secs)
        return best, None

    t1, why = timed(base)
    if t1 is None:
        return None, why
    t2, _ = timed(base + more)
    if min_secs > 0 and t2 - t1 < min_secs:
        per_batch = max((t2 - t1) / more, 1e-4)
        more = min(int(more * max(2.0, min_secs / max(t2 - t1, 1e-3))) + 1, int(min_secs * 1.5 / per_batch) + more)
        more = min(more, 2048)
        t2, _ = timed(base + more)
    if t2 <= t1 and ctx.dry:
        # Tiny dry-run sizes on a busy CPU: start-up noise can exceed the extra batches' time.
        return "noise", f"{base + more} batches took no longer than {base} ({t2:.2f}s vs {t1:.2f}s)"
    if t2 <= t1:
        raise CheckFailed(f"predict {tag} {prec}: {base + more} batches took no longer than {base} "
                          f"({t2:.2f}s vs {t1:.2f}s): the timing cannot be trusted")
    return more * batch / (t2 - t1), None


def has_mpi(binary):
    with open(binary, "rb") as fh:
        return b"libmpi.so" in fh.read()


def step4_mpi(ctx):
    st = Step(ctx, 4, "2 MPI ranks on one GPU against 1 rank (data-parallel equivalence)")
    if not has_mpi(ctx.easynlp):
        why = f"{os.path.basename(ctx.easynlp)} was built without `--features mpi` (no libmpi)"
    elif not shutil.which("mpirun"):
        why = "no `mpirun` on the PATH"
    else:
        why = None
    if why:
        say(f"SKIP step 4: skipped: {why}")
        ctx.rows.append((4, "2 ranks on one device vs 1 rank, max weight difference", "skipped", why, "-", "SKIP"))
        ctx.outcomes.append((4, "mpi", "SKIP", why))
        return
    # As tests/distributed.rs: minilm-l3, 256 SST-2 rows, 3 optimizer steps of 16 rows, seed 7.
    rows = max(48, env_int("GPU_CHECK_MPI_ROWS", 256))
    train = ctx.path("mpi-train.tsv")
    dev = ctx.path("mpi-dev.tsv")
    write_rows(train, read_rows(os.path.join(ctx.sst2, "train.tsv"), True)[:rows])
    write_rows(dev, read_rows(os.path.join(ctx.sst2, "dev.tsv"), True)[:64])
    common = [f"--epoch_num={48 / rows!r}", "--logging_steps=1"]
    one, two = fresh(ctx.path("mpi-one")), fresh(ctx.path("mpi-two"))

    def args(ckpt, extra):
        a = train_args(ctx.model_l3, train, dev, ckpt, 64, 16, lr="5e-5", seed=7)
        a = [x for x in a if not x.startswith(("--epoch_num", "--micro_batch_size"))]
        return a + common + extra

    ctx.ours_ok(st, "mpi-1rank", args(one, ["--worker_gpu=1", "--micro_batch_size=16"]))
    _, text = ctx.ours_ok(st, "mpi-2ranks", args(two, ["--worker_gpu=2", "--micro_batch_size=8"]))
    if not ctx.dry and text.count("running on CUDA GPU 0") < 1:
        raise CheckFailed("2 ranks: no rank reported running on CUDA GPU 0")
    r = ctx.torch(st, "weights-diff", ["weights-diff", one, two])
    la, _ = train_metrics(one)
    lb, _ = train_metrics(two)
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(la, lb)) if la and len(la) == len(lb) else float("inf")
    bound = env_float("GPU_CHECK_MPI_BOUND", 1e-5 if ctx.dry else 1e-4)
    acc1, acc2 = dev_accuracy(one), dev_accuracy(two)
    ok = r["max_abs_diff"] <= bound and loss_diff <= bound and acc1 == acc2
    status = "PASS" if ok else "FAIL"
    detail = (f"minilm-l3, {rows} rows, 3 steps: max weight difference {r['max_abs_diff']:.2e} (bound {bound:g}), "
              f"logged losses within {loss_diff:.2e}, dev accuracy {acc1:.4f} / {acc2:.4f}")
    ctx.rows.append((4, "2 ranks on one device (`--worker_gpu=2`, micro-batch 8) vs 1 rank (16): max weight difference",
                     f"{r['max_abs_diff']:.2e}", f"losses within {loss_diff:.1e}", f"<= {bound:g}", status))
    ctx.outcomes.append((4, "mpi", status, detail))
    say(f"{status} step 4: {detail}")
    if not ok:
        raise CheckFailed(detail)


def render(ctx, total_s):
    t = ctx.facts.get("torch") or {}
    where = "dry run on the CPU (reduced sizes: not a GPU measurement)" if ctx.dry else (ctx.facts.get("gpu") or "GPU")
    head = (f"gpu_check.sh, {time.strftime('%Y-%m-%d')}, commit {git_commit()}, binary "
            f"{os.path.basename(ctx.easynlp)} (sha256 {sha256_short(ctx.easynlp)}), {where}; torch "
            f"{t.get('torch', '?')}, transformers {t.get('transformers', '?')}; {total_s:.0f}s in all")
    lines = [head, "", "| step | check | easynlp-rs | PyTorch / reference | bound or ours/torch | status |",
             "|---|---|---|---|---|---|"]
    rows = list(ctx.rows)
    for s, title, status, detail in ctx.outcomes:
        if status == "FAIL" and not any(r[0] == s and r[5] == "FAIL" for r in ctx.rows):
            rows.append((s, title, detail, "", "", "FAIL"))
    for s, case, ours, ref, bound, status in sorted(rows, key=lambda r: r[0]):
        status = f"**{status}**" if status in ("PASS", "FAIL") else status
        lines.append(f"| {s} | {case} | {ours} | {ref} | {bound} | {status} |")
    return "\n".join(lines) + "\n"


def cmd_run(args):
    ctx = Context(args)
    wanted = {int(s) for s in args.steps.split(",") if s.strip()}
    say(f"gpu_check: {'DRY RUN on the CPU' if ctx.dry else 'GPU run'}; easynlp {ctx.easynlp}; shared {ctx.shared}; "
        f"python {ctx.python}; work {ctx.work}; steps {sorted(wanted)}")
    for p in (ctx.easynlp, ctx.model_l6, os.path.join(ctx.sst2, "train.tsv")):
        if not os.path.exists(p):
            say(f"FAIL: {p} not found")
            return 2
    steps = [(0, step0_device), (1, step1_logits), (2, step2_finetune), (3, step3_speed), (4, step4_mpi)]
    for n, fn in steps:
        if n not in wanted:
            continue
        if ctx.budget_left() < 5:
            say(f"FAIL step {n}: no time left in the overall budget")
            ctx.outcomes.append((n, fn.__name__, "FAIL", "no time left"))
            continue
        try:
            fn(ctx)
        except (CheckFailed, StepTimeout) as e:
            if not any(o[0] == n for o in ctx.outcomes):
                ctx.outcomes.append((n, fn.__name__.split("_", 1)[1], "FAIL", str(e)))
            say(f"FAIL step {n}: {e}")
            if n == 0:
                say("the device is not usable: the remaining steps are not run")
                break
        except Exception as e:  # a bug in this script: still report, never a silent pass
            ctx.outcomes.append((n, fn.__name__.split("_", 1)[1], "FAIL", f"{type(e).__name__}: {e}"))
            say(f"FAIL step {n}: {type(e).__name__}: {e}")
    total = time.monotonic() - ctx.started
    md = render(ctx, total)
    dest_dir = ctx.out or ctx.work
    os.makedirs(dest_dir, exist_ok=True)
    dest = os.path.join(dest_dir, "gpu_check.md")
    with open(dest, "w") as fh:
        fh.write(md)
    with open(os.path.join(dest_dir, "gpu_check.json"), "w") as fh:
        json.dump({"dry_run": ctx.dry, "outcomes": ctx.outcomes, "rows": ctx.rows, "facts": ctx.facts,
                   "seconds": total}, fh, indent=1, default=str)
    if ctx.out:
        # The logs come back with $OUT (small text files only).
        shutil.copytree(ctx.logs, os.path.join(ctx.out, "gpu_check_logs"), dirs_exist_ok=True)
    say("\n" + md)
    failed = [o for o in ctx.outcomes if o[2] == "FAIL"]
    say(f"gpu_check: {len(failed)} failed, "
        f"{sum(o[2] == 'PASS' for o in ctx.outcomes)} passed, {sum(o[2] == 'SKIP' for o in ctx.outcomes)} skipped "
        f"in {total:.0f}s; table written to {dest}")
    return 1 if failed else 0


# ------------------------------------------------------------------------------ torch workers

def import_torch(cpu):
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    # f32 means f32: no TF32 in the matrix products (checked against ours at 1e-3).
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    dev = "cpu" if cpu else "cuda"
    if not cpu and not torch.cuda.is_available():
        raise SystemExit("torch.cuda.is_available() is False")
    return torch, transformers, dev


def device_name(torch, dev):
    return torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"


def cmd_env(args):
    torch, transformers, dev = import_torch(True)
    ok = torch.cuda.is_available()
    return {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
            "cuda_available": ok, "device_name": torch.cuda.get_device_name(0) if ok else None}


def cmd_logits(args):
    torch, transformers, dev = import_torch(args.cpu)
    from transformers import AutoTokenizer, BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(args.ckpt, attn_implementation="eager",
                                                          dtype=torch.float32).to(dev).eval()
    tok = AutoTokenizer.from_pretrained(args.ckpt, use_fast=True)
    texts = [r.split("\t")[0] for r in read_rows(args.table, False)]
    ours = [[float(x) for x in l.split("\t")[0].split(",")] for l in read_rows(args.ours, False)]
    if len(ours) != len(texts):
        raise SystemExit(f"{args.ours}: {len(ours)} rows, the table has {len(texts)}")
    theirs = []
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            enc = tok(texts[i:i + 32], padding=True, truncation=True, max_length=args.seq, return_tensors="pt").to(dev)
            theirs.extend(model(**enc).logits.float().cpu().tolist())
    diff = max(abs(a - b) for ra, rb in zip(ours, theirs) for a, b in zip(ra, rb))
    agree = sum(int(max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__))
                for a, b in zip(ours, theirs))
    log(f"logits: {len(texts)} rows on {dev}, max abs diff {diff:.3e}, argmax agree {agree}/{len(texts)}")
    return {"rows": len(texts), "max_abs_diff": diff, "argmax_agree": agree,
            "max_abs_logit": max(abs(x) for r in theirs for x in r), "torch": torch.__version__,
            "transformers": transformers.__version__, "device_name": device_name(torch, dev)}


def cmd_make_model(args):
    """A BERT encoder of the given shape with random weights, minilm-l6's vocabulary and tokenizer
    files: config.json + model.safetensors (BertModel keys, pooler included)."""
    torch, transformers, _ = import_torch(True)
    from transformers import BertConfig, BertModel

    layers, hidden, heads, inter = (int(x) for x in args.shape.split(","))
    with open(os.path.join(args.like, "config.json")) as fh:
        cfg = json.load(fh)
    cfg.update(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter,
               architectures=["BertModel"], _name_or_path="random-bert")
    torch.manual_seed(args.seed)
    model = BertModel(BertConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")}))
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(args.like, f)):
            shutil.copy(os.path.join(args.like, f), args.out)
    n = sum(p.numel() for p in model.parameters())
    log(f"make-model: {args.out}: {layers} layers, hidden {hidden}, {heads} heads, intermediate {inter}: {n} parameters")
    return {"parameters": n, "dir": args.out}


def cmd_bench(args):
    """Fixed random batch (ids in [1000, vocab), [CLS] first, [SEP] last, mask all 1), as
    benches/torch_reference.py: train = zero_grad, forward with labels, backward, clip 1.0, AdamW
    step; infer = eval() under inference_mode; bf16 = forward under torch.autocast(bf16)."""
    torch, transformers, dev = import_torch(args.cpu)
    from transformers import BertForSequenceClassification

    torch.manual_seed(42)
    results = {}
    for prec in args.precisions.split(","):
        for mode in ("train", "infer"):
            model = BertForSequenceClassification.from_pretrained(
                args.model, num_labels=2, attn_implementation=args.attn, dtype=torch.float32).to(dev)
            vocab = model.config.vocab_size
            ids = torch.randint(1000, vocab, (args.batch, args.seq), dtype=torch.long)
            ids[:, 0], ids[:, -1] = 101, 102
            ids = ids.to(dev)
            mask, types = torch.ones_like(ids), torch.zeros_like(ids)
            labels = torch.randint(0, 2, (args.batch,), dtype=torch.long).to(dev)
            def cast():
                if prec == "bf16":
                    return torch.autocast(dev, dtype=torch.bfloat16)
                return contextlib.nullcontext()

            if mode == "train":
                model.train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-5, eps=1e-6, weight_decay=0.01)

                def one():
                    opt.zero_grad(set_to_none=True)
                    with cast():
                        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
                    out.loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
            else:
                model.eval()

                def one():
                    with torch.inference_mode(), cast():
                        model(input_ids=ids, attention_mask=mask, token_type_ids=types)

            sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
            for _ in range(args.warmup):
                one()
            sync()
            # Chunks of --steps steps (synchronised at the end of each) until --min-seconds passed.
            t0 = time.perf_counter()
            steps = 0
            while steps == 0 or time.perf_counter() - t0 < args.min_seconds:
                for _ in range(args.steps):
                    one()
                steps += args.steps
                sync()
            secs = time.perf_counter() - t0
            results[f"{mode}-{prec}"] = {"examples_per_s": args.batch * steps / secs, "steps": steps,
                                         "seconds_per_step": secs / steps}
            log(f"bench {os.path.basename(args.model)} {mode} {prec} on {dev}: {steps} steps, "
                f"{args.batch * steps / secs:.1f} ex/s")
            del model
            if dev == "cuda":
                torch.cuda.empty_cache()
    return {"results": results, "torch": torch.__version__, "transformers": transformers.__version__,
            "device_name": device_name(torch, dev), "attn": args.attn}


def cmd_weights_diff(args):
    from safetensors.numpy import load_file

    a = load_file(os.path.join(args.a, "model.safetensors"))
    b = load_file(os.path.join(args.b, "model.safetensors"))
    if set(a) != set(b):
        raise SystemExit(f"the two checkpoints hold different tensors: {sorted(set(a) ^ set(b))[:5]}")
    diff = max(float(abs(a[k].astype("float64") - b[k].astype("float64")).max()) for k in a)
    log(f"weights-diff: {len(a)} tensors, max abs diff {diff:.3e}")
    return {"max_abs_diff": diff, "tensors": len(a)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the checks (what gpu_check.sh calls)")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--easynlp", required=True)
    r.add_argument("--shared", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--steps", default="0,1,2,3,4")

    def worker(name, fn, help_text):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--cpu", action="store_true", help="run torch on the CPU (dry run)")
        s.add_argument("--json-out", required=True)
        s.set_defaults(func=fn)
        return s

    worker("env", cmd_env, "torch / CUDA versions")
    s = worker("logits", cmd_logits, "compare our logits with transformers'")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--table", required=True)
    s.add_argument("--ours", required=True)
    s.add_argument("--seq", type=int, default=128)
    s = worker("make-model", cmd_make_model, "a random BERT of a given shape")
    s.add_argument("--like", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--shape", required=True, help="layers,hidden,heads,intermediate")
    s.add_argument("--seed", type=int, default=0)
    s = worker("bench", cmd_bench, "PyTorch eager examples/s at a fixed shape")
    s.add_argument("--model", required=True)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--seq", type=int, default=128)
    s.add_argument("--precisions", default="f32,bf16")
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--min-seconds", type=float, default=1.0)
    s.add_argument("--attn", default=os.environ.get("GPU_CHECK_TORCH_ATTN", "sdpa"))
    s = worker("weights-diff", cmd_weights_diff, "largest difference of two checkpoints' weights")
    s.add_argument("a")
    s.add_argument("b")
    args = p.parse_args(argv)
    if args.cmd == "run":
        return cmd_run(args)
    result = args.func(args)
    with open(args.json_out, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
