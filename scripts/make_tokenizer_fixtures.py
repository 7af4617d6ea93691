#!/usr/bin/env python3
"""Writes the tokenizer fixtures of tests/tokenize_parity.rs: small BERT vocabularies (cased Latin +
CJK, and a Chinese-style one), learnt here from the text below (`train_vocab`), the model directories built from them as the Hugging Face Hub holds them (vocab.txt and/or
tokenizer.json, tokenizer_config.json, special_tokens_map.json), and the encodings that transformers'
BertTokenizerFast and the slow BertTokenizer (BertTokenizerLegacy in transformers 5) give for each
(they must agree, except on the two known differences of `known_difference`, which the reference
records as `slow_input_ids` and `slow_differs`; the script stops on any other).

Run from the repository root (rewrites tests/fixtures/tokenizers/ deterministically):

    /work/venv-torch/bin/python scripts/make_tokenizer_fixtures.py

Written with transformers 5.24 and tokenizers 0.23.3.
"""

import collections
import json
import os
import shutil
import sys
import unicodedata

import tokenizers
import transformers
from tokenizers import normalizers, pre_tokenizers
from transformers import BertTokenizerFast

try:  # transformers >= 5: the slow tokenizer is the "legacy" class
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as BertTokenizerSlow
except ImportError:  # transformers 4
    from transformers import BertTokenizer as BertTokenizerSlow

OUT = os.path.join("tests", "fixtures", "tokenizers")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Training text, written for these fixtures: capitalised and accented Latin, and Chinese.
LATIN = """
The Quick Brown Fox jumps over the lazy dog near the River Thames in London.
Alice and Bob met Charlie at the Café de Flore in Paris on Monday morning.
NASA launched a new satellite, and the European Space Agency joined the mission.
In Zürich, Müller and Schröder ordered Käsespätzle and a glass of Grüner Veltliner.
São Paulo, Bogotá and Ciudad de México are large cities in Latin America.
The señor said mañana, and the niño laughed at the piñata.
Ångström, Øresund and Malmö are names that Swedes and Danes know well.
Her résumé listed a naïve coöperative project and a fiancée in Besançon.
I think this movie is wonderful; the Acting was Great and the Music was better.
This film was TERRIBLE, boring and far too long, but the Ending was good.
Google, Apple, Microsoft and Amazon are American companies; Alibaba is Chinese.
Python and Rust are programming languages; Java and JavaScript are different.
The United States of America and the United Kingdom signed the agreement.
Dr. Smith and Prof. Jones will present their research at the University of Oxford.
Emily Brontë wrote Wuthering Heights; Charlotte Brontë wrote Jane Eyre.
Björk sang in Reykjavík while Dvořák played in Prague.
McDonald's and O'Reilly opened new stores in New York and Los Angeles.
The iPhone, the iPad and the MacBook are products; eBay and YouTube are websites.
How old are you? I am twenty years old, and my brother is older than me.
The Louvre Museum in Paris, France, houses the Mona Lisa and many other paintings.
He is in Mexico City with his friends from Madrid and Barcelona.
It was the best of times, it was the worst of times, it was the age of wisdom.
Running, runner, runs and ran share a stem; playing, played and player too.
""".strip().splitlines()

CHINESE = """
我喜欢学习中文，也喜欢编程。
今天天气很好，我们去公园散步吧！
北京是中国的首都，上海是最大的城市。
这部电影非常好看，演员的表演很精彩。
这部电影太无聊了，我看到一半就睡着了。
他在阿里巴巴工作，每天都很忙。
你多大了？我今年二十岁。
卢浮宫位于法国巴黎，收藏着蒙娜丽莎。
我们用Python和Rust写代码，也用中文写文档。
《红楼梦》是中国古典小说，作者是曹雪芹。
她说：“明天见！”然后就走了。
春天来了，花开了，鸟儿在树上唱歌。
学习机器学习需要数学、统计和编程的知识。
这家餐厅的菜很好吃，价格也不贵。
中华人民共和国成立于一九四九年。
自然语言处理是人工智能的重要方向。
知识蒸馏可以把大模型的知识传给小模型。
他买了一部新手机，是苹果公司的产品。
""".strip().splitlines()

# Texts the references are computed on: CJK (with CJK punctuation, full-width forms, mixed
# CJK + Latin, kana and hangul, rare ideographs), accented Latin (composed and decomposed),
# capitalised words, special tokens written in the text, control and invisible characters.
SINGLES = [
    "The Quick Brown Fox Jumps Over The Lazy Dog.",
    "NASA and the U.S. Army met McDonald's CEO in New York.",
    "iPhone, eBay and YouTube are CamelCase names; HTTPServer is not.",
    "Café, naïve, résumé, jalapeño, Zürich, São Paulo, Ångström.",
    "Composed \u00e9 \u00fc \u00f1 \u00c5 vs decomposed e\u0301 u\u0308 n\u0303 A\u030a; the angstrom sign \u212b.",
    "ÉCOLE ÜBER MAÑANA ÅLAND Øresund ŁÓDŹ",
    "ΟΔΥΣΣΕΥΣ and İstanbul and Straße and ﬁne",
    "我喜欢学习中文，也喜欢编程。",
    "「你好」，世界！《红楼梦》是一本书；她说：“好的。”（完）",
    "全角字符：ＡＢＣ　ａｂｃ　１２３！？＃",
    "我在Google工作，用Python和Rust写代码。",
    "日本語のテキストとカタカナ、한국어 텍스트",
    "[MASK] 是一个特殊符号，[CLS] 和 [SEP] 也是；[mask] 不是。",
    "emoji 😀 and symbols © ® ™ … — «quoted»",
    "",
    "\u00adsoft\u00adhyphen, zero\u200bwidth, tab\tand\r\nnewline\u3000ideographic space",
    "𠀀𠀁 is extension B, 丽 is a compatibility ideograph \uf900",
    "Supercalifragilisticexpialidocious and unbelievably unrecognisable words",
]

PAIRS = [
    ("How old are you?", "你多大了？"),
    (
        "The Louvre Museum in Paris, France, houses the Mona Lisa and many other paintings.",
        "卢浮宫位于法国巴黎，收藏着蒙娜丽莎。",
    ),
    ("Él está en la Ciudad de México con sus amigos.", "He is in Mexico City with his friends."),
    (
        "I think this movie is wonderful; the Acting was Great and the Music was better than I expected.",
        "这部电影非常好看，演员的表演很精彩，音乐也很好听。",
    ),
    ("短", "A much longer second sentence, with Capitals, accents (é, ü) and 中文字符 mixed in."),
    (
        "Müller, Schröder and Dvořák: Zürich, Malmö, Besançon, Reykjavík, Bogotá, São Paulo, Ciudad de México.",
        "NASA, Google, Apple and Alibaba; 北京，上海，巴黎，伦敦；ＡＢＣ１２３.",
    ),
]

MAX_LENGTHS = [16, 128]


def train_vocab(lines, lowercase, chinese_chars, size):
    """A WordPiece vocabulary learnt from `lines`, deterministically (the `tokenizers` trainer
    breaks ties by hash order, so its vocabulary changes from run to run): the special tokens,
    every character alone and as a continuation, then the most frequent words and word endings
    (ties broken alphabetically) up to `size` entries."""
    norm = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=None, lowercase=lowercase
    )
    pre = pre_tokenizers.BertPreTokenizer()
    words = collections.Counter()
    for line in lines:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
    chars = sorted({c for w in words for c in w})
    endings = collections.Counter()
    for w, n in words.items():
        for k in range(2, min(len(w), 5)):
            endings["##" + w[-k:]] += n
    vocab = SPECIALS + chars + ["##" + c for c in chars]
    ranked = sorted(list(words.items()) + list(endings.items()), key=lambda wn: (-wn[1], wn[0]))
    for w, _ in ranked:
        if len(vocab) >= size:
            break
        if w not in vocab and len(w) > 1:
            vocab.append(w)
    return vocab


def write(path, text):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_json(path, obj):
    write(path, json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True) + "\n")


def vocab_dir(name, vocab, config=None, special_map=None):
    d = os.path.join(OUT, name)
    os.makedirs(d)
    write(os.path.join(d, "vocab.txt"), "\n".join(vocab) + "\n")
    if config is not None:
        write_json(os.path.join(d, "tokenizer_config.json"), config)
    if special_map is not None:
        write_json(os.path.join(d, "special_tokens_map.json"), special_map)
    return d


def saved_dir(name, source):
    """The directory as transformers' save_pretrained writes it (tokenizer.json + tokenizer_config.json)."""
    d = os.path.join(OUT, name)
    BertTokenizerFast.from_pretrained(source).save_pretrained(d)
    # Keep only what the Hub holds and the loader reads; drop machine-specific keys.
    cfg_path = os.path.join(d, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    for key in ("is_local", "local_files_only", "name_or_path", "model_max_length", "backend"):
        cfg.pop(key, None)
    write_json(cfg_path, cfg)
    for f in os.listdir(d):
        if f not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            os.remove(os.path.join(d, f))
    return d


def encode(tok, a, b, max_length):
    enc = tok(a, b, max_length=max_length, truncation="longest_first", padding=False, return_token_type_ids=True)
    return enc["input_ids"], enc["token_type_ids"]


def known_difference(fast, a, b, max_length, slow):
    """Why the slow tokenizer's `slow` encoding differs from the fast one's, if it is one of the two
    known differences (this program follows the fast tokenizer), else None:
    - "nfc": the slow tokenizer composes the text (NFC) first, the fast one does not (it matters
      when accents are kept);
    - "odd_token": a pair whose texts are both cut to fit an odd budget; the fast tokenizer gives
      the odd token to the text with more tokens (the second on a tie), the slow one always to
      the first."""
    nfc = [unicodedata.normalize("NFC", t) if t is not None else None for t in (a, b)]
    if nfc != [a, b] and encode(fast, nfc[0], nfc[1], max_length) == slow:
        return "nfc"
    n_a, n_b = (len(fast(t, add_special_tokens=False)["input_ids"]) if t else 0 for t in nfc)
    budget = max_length - 3
    if b is not None and budget % 2 == 1 and min(n_a, n_b) > budget // 2 and n_a <= n_b:
        return "odd_token"
    return None


def references(d, slow_dir):
    """The fast tokenizer's encodings of `d`, checked against the slow tokenizer of `slow_dir` (the
    same vocabulary and settings as vocab.txt, which the slow tokenizer needs)."""
    fast = BertTokenizerFast.from_pretrained(d)
    slow = BertTokenizerSlow.from_pretrained(slow_dir)
    cases = []
    for max_length in MAX_LENGTHS:
        for a, b in [(s, None) for s in SINGLES] + PAIRS:
            ids, types = encode(fast, a, b, max_length)
            slow_ids, slow_types = encode(slow, a, b, max_length)
            case = {"text_a": a, "text_b": b, "max_length": max_length, "input_ids": ids, "token_type_ids": types}
            if (ids, types) != (slow_ids, slow_types):
                case["slow_input_ids"] = slow_ids
                case["slow_differs"] = known_difference(fast, a, b, max_length, (slow_ids, slow_types))
                if case["slow_differs"] is None:
                    sys.exit(f"{d}: fast and slow tokenizers disagree on {a!r} / {b!r} at {max_length}:\n{ids}\n{slow_ids}")
            cases.append(case)
    unk = fast.unk_token_id
    assert any(unk in c["input_ids"] for c in cases), f"{d}: no case reaches the unknown token"
    return cases


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    cased = train_vocab(LATIN + CHINESE, lowercase=False, chinese_chars=True, size=900)
    chinese = train_vocab(CHINESE * 3 + LATIN, lowercase=True, chinese_chars=False, size=900)
    # The Chinese-style vocabulary with its own unknown / classification token names.
    renamed = ["<unk>" if t == "[UNK]" else "<cls>" if t == "[CLS]" else t for t in chinese]

    cased_dir = vocab_dir(
        "cased", cased, {"do_lower_case": False}, {t.strip("[]").lower() + "_token": t for t in SPECIALS}
    )
    chinese_dir = vocab_dir("chinese", chinese)
    # Each model directory, and the vocab.txt directory the slow tokenizer checks it against.
    dirs = [
        # Cased, vocab.txt with the config that says so (as google-bert/bert-base-cased).
        (cased_dir, cased_dir),
        # Chinese-style, vocab.txt alone: every setting is the default (lower case, CJK split).
        (chinese_dir, chinese_dir),
        # As save_pretrained writes them: tokenizer.json and tokenizer_config.json.
        (saved_dir("cased-json", cased_dir), cased_dir),
        (saved_dir("chinese-json", chinese_dir), chinese_dir),
    ]
    for d in [
        # Cased, keeping case but stripping accents.
        vocab_dir("cased-strip-accents", cased, {"do_lower_case": False, "strip_accents": True}),
        # Lower-cased, keeping accents.
        vocab_dir("uncased-keep-accents", cased, {"do_lower_case": True, "strip_accents": False}),
        # CJK not split, cased; special tokens named in special_tokens_map.json.
        vocab_dir(
            "chinese-no-split",
            renamed,
            {"tokenize_chinese_chars": False, "do_lower_case": False, "tokenizer_class": "BertTokenizer"},
            {"unk_token": "<unk>", "cls_token": "<cls>", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]"},
        ),
    ]:
        dirs.append((d, d))
    # tokenizer.json says lower case and no CJK split, tokenizer_config.json says cased (and CJK
    # split by default): transformers follows the config.
    d = os.path.join(OUT, "json-config-wins")
    shutil.copytree(os.path.join(OUT, "cased-json"), d)
    with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    assert tj["normalizer"]["type"] == "BertNormalizer" and tj["normalizer"]["lowercase"] is False
    tj["normalizer"]["lowercase"] = True
    tj["normalizer"]["handle_chinese_chars"] = False
    write(os.path.join(d, "tokenizer.json"), json.dumps(tj, ensure_ascii=False, indent=2) + "\n")
    dirs.append((d, cased_dir))

    reference = {
        "generator": "scripts/make_tokenizer_fixtures.py",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "call": "tokenizer(text_a, text_b, max_length=max_length, truncation='longest_first', padding=False, return_token_type_ids=True)",
        "models": {os.path.basename(d): references(d, slow) for d, slow in dirs},
    }
    # One case per line: reviewable diffs, small file.
    models = reference.pop("models")
    head = json.dumps(reference, ensure_ascii=False, indent=1, sort_keys=True)[:-2]
    blocks = []
    for name, cases in models.items():
        rows = ",\n".join("   " + json.dumps(c, ensure_ascii=False, sort_keys=True) for c in cases)
        blocks.append(f'  {json.dumps(name)}: [\n{rows}\n  ]')
    text = head + ',\n "models": {\n' + ",\n".join(blocks) + "\n }\n}\n"
    json.loads(text)
    write(os.path.join(OUT, "reference.json"), text)
    for d, _ in dirs:
        print(d, sorted(os.listdir(d)))


if __name__ == "__main__":
    main()
