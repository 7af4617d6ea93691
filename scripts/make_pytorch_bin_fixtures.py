#!/usr/bin/env python3
"""Writes the weight-file fixtures of tests/pytorch_bin.rs: one tiny random BERT classifier
(vocabulary 100, hidden 16, 2 layers, 2 heads, 3 labels) saved the ways the Hugging Face Hub holds
weights, and the logits transformers computes with it:

- safetensors/            model.safetensors
- bin/                    pytorch_model.bin, torch.save(state_dict) (zip format)
- pretraining-tied-bin/   BertForPreTraining's keys (cls.predictions.decoder.weight sharing its
                          storage with the word embeddings) plus classifier.*, zip format
- legacy-format-bin/      pre-1.6 (non-zip) serialization, names as pytorch-pretrained-bert wrote
                          them: LayerNorm gamma/beta, backbone without the `bert.` prefix
- fp16-bin/               the state dict in float16
- nested-state-dict.bin   {"state_dict": {...}} (not a flat state dict: an error)
- texts.tsv, reference.json   the rows and transformers' logits for them (max_length 32)

Every weight is a float16 value, so the float16 file holds exactly the same numbers. Each model
directory also has config.json and vocab.txt. Reruns give the same files, except the legacy one,
whose storage keys torch takes from memory addresses.

Run from the repository root (rewrites tests/fixtures/pytorch_bin/ deterministically):

    /work/venv-torch/bin/python scripts/make_pytorch_bin_fixtures.py

Written with torch 2.15 and transformers 5.24.
"""

import collections
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import BertConfig, BertForPreTraining, BertForSequenceClassification, BertTokenizerFast

OUT = os.path.join("tests", "fixtures", "pytorch_bin")
WORDS = (
    "the a an of and or but not very good bad great terrible movie film story acting music plot "
    "scene actor actress director is was are were be been it this that these those i you he she "
    "we they love hate like enjoyed boring funny sad happy long short slow fast best worst "
    "ever never always again really quite too so much more less than then"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,!?'-") + WORDS
TEXTS = [
    "the movie was very good",
    "this film is the worst film ever !",
    "i really enjoyed the acting , but the plot was too slow",
    "boring",
    "they love it and we love it",
    "a terrible story with great music",
    "an unknown word : zyzzyva",
    "the best scene , the best actor , the best director , the best music , the best plot ever",
]
MAX_LENGTH = 32


def write(path, text):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def model_dir(name, config):
    d = os.path.join(OUT, name)
    os.makedirs(d)
    write(os.path.join(d, "vocab.txt"), "\n".join(VOCAB) + "\n")
    write(os.path.join(d, "config.json"), config.to_json_string(use_diff=False))
    return d


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    torch.manual_seed(20240611)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=MAX_LENGTH,
        initializer_range=0.2,
        num_labels=3,
        id2label={0: "neg", 1: "neu", 2: "pos"},
        label2id={"neg": 0, "neu": 1, "pos": 2},
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:  # not ones and zeros, so that gamma and beta cannot be swapped unseen
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1)
            p.copy_(p.half().float())  # every weight exactly a float16 value
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}

    save_file(state, os.path.join(model_dir("safetensors", config), "model.safetensors"))
    # As transformers' save_pretrained did: the OrderedDict of state_dict(), with its _metadata.
    torch.save(model.state_dict(), os.path.join(model_dir("bin", config), "pytorch_model.bin"))

    pretraining = BertForPreTraining(config).eval()
    with torch.no_grad():
        missing = pretraining.bert.load_state_dict(model.bert.state_dict(), strict=False)
    assert not missing.unexpected_keys, missing
    pretraining.tie_weights()
    pt_state = dict(pretraining.state_dict())
    assert (
        pt_state["cls.predictions.decoder.weight"].data_ptr()
        == pt_state["bert.embeddings.word_embeddings.weight"].data_ptr()
    ), "the decoder weight does not share the word embeddings' storage"
    pt_state["classifier.weight"] = state["classifier.weight"]
    pt_state["classifier.bias"] = state["classifier.bias"]
    torch.save(pt_state, os.path.join(model_dir("pretraining-tied-bin", config), "pytorch_model.bin"))

    legacy = collections.OrderedDict()
    for k, v in state.items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        legacy[k[len("bert.") :] if k.startswith("bert.") else k] = v
    torch.save(
        legacy,
        os.path.join(model_dir("legacy-format-bin", config), "pytorch_model.bin"),
        _use_new_zipfile_serialization=False,
    )

    torch.save(
        {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
        os.path.join(model_dir("fp16-bin", config), "pytorch_model.bin"),
    )
    torch.save({"state_dict": {"classifier.bias": state["classifier.bias"]}}, os.path.join(OUT, "nested-state-dict.bin"))

    tokenizer = BertTokenizerFast.from_pretrained(os.path.join(OUT, "bin"))
    enc = tokenizer(TEXTS, max_length=MAX_LENGTH, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    write(os.path.join(OUT, "texts.tsv"), "\n".join(TEXTS) + "\n")
    reference = {
        "generator": "scripts/make_pytorch_bin_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "max_length": MAX_LENGTH,
        "texts": TEXTS,
        "logits": [[float(x) for x in row] for row in logits],
    }
    write(os.path.join(OUT, "reference.json"), json.dumps(reference, indent=1) + "\n")
    total = 0
    for root, _, files in os.walk(OUT):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    print(f"{OUT}: {total} bytes")


if __name__ == "__main__":
    main()
