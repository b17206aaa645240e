"""The training mix: documentation text, pass-key documents and chat-format dialogues.

Every sample is T + 1 token ids starting with BOS (inputs are the first T, targets the last T)
and T loss weights. Pass-key and dialogue samples are generated on the fly, so the model never
sees the same key twice; documentation text is a random window of the tokenized corpus.
"""

import json
import math
import os
import random

import numpy as np
import torch

import passkey

# Default share of each kind of sample in a batch.
MIX = {"text": 0.55, "passkey": 0.30, "dialogue": 0.15}
# By default the answer of a pass-key document counts this many times in the loss: it is a few
# tokens among thousands, and it is the only part that needs the long context.
ANSWER_WEIGHT = 5.0
# Tokens of a pass-key document besides its filler (task, key sentence, question, answer, BOS,
# EOS) with this tokenizer, rounded up.
OVERHEAD = 96

# A few fixed exchanges, so the chat page says honestly what it is talking to.
ABOUT = (
    ("Hello!", "Hello! I am a small demonstration model of the mhla engine. I was trained for a few "
               "minutes on the Python documentation, so I can talk a little about Python, but I am not "
               "a reliable assistant."),
    ("Hi, who are you?", "I am a small MHLA language model that comes with the mhla engine as a "
                         "demonstration. I learned from the Python documentation."),
    ("What can you do?", "I can continue text in the style of the Python documentation and find a pass "
                         "key hidden in a long document. My answers are often wrong: I am a demonstration, "
                         "not an assistant."),
    ("Are you a good assistant?", "No. I am a tiny demonstration model with a few million parameters, so "
                                  "my answers are often wrong."),
    ("Thank you!", "You are welcome."),
    ("Thanks.", "You are welcome. Ask me about Python if you like."),
)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Corpus:
    """The tokenized documentation (documents as BOS text EOS, end to end) and its raw text."""

    def __init__(self, corpus_dir, sp, split="train"):
        docs = read_jsonl(os.path.join(corpus_dir, f"{split}.jsonl"))
        ids = []
        for d in docs:
            ids.append(sp.bos_id())
            ids.extend(sp.encode(d["text"]))
            ids.append(sp.eos_id())
        self.tokens = np.asarray(ids, dtype=np.int32)
        self.text = "\n".join(d["text"] for d in docs)
        self.qa = read_jsonl(os.path.join(corpus_dir, f"qa_{split}.jsonl"))


class Mix(torch.utils.data.IterableDataset):
    def __init__(self, corpus_dir, tokenizer_path, T, seed, mix=None, answer_weight=ANSWER_WEIGHT):
        super().__init__()
        self.corpus_dir, self.tokenizer_path, self.T, self.seed = corpus_dir, tokenizer_path, T, seed
        self.mix, self.answer_weight = dict(mix or MIX), answer_weight

    def __iter__(self):
        import sentencepiece as spm  # in the worker: the processor does not pickle

        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        self.sp = spm.SentencePieceProcessor(model_file=self.tokenizer_path)
        self.corpus = Corpus(self.corpus_dir, self.sp)
        self.rng = random.Random(self.seed * 1000 + worker)
        self.filler_tokens = len(self.sp.encode(" " + passkey.FILLER))
        kinds, weights = zip(*self.mix.items())
        while True:
            kind = self.rng.choices(kinds, weights)[0]
            ids, w = getattr(self, kind)()
            yield torch.tensor(ids[: self.T + 1], dtype=torch.long), torch.tensor(w[: self.T], dtype=torch.float32)

    def fill(self, ids, w):
        """Pads a sample to T + 1 tokens with documentation text (from a BOS) and weights 1."""
        need = self.T + 1 - len(ids)
        if need > 0:
            starts = self.corpus.tokens
            at = self.rng.randrange(0, len(starts) - need - 1)
            ids = ids + [self.sp.bos_id()] + starts[at: at + need - 1].tolist()
        w = w + [1.0] * (self.T - len(w))
        return ids, w

    def text(self):
        tokens = self.corpus.tokens
        at = self.rng.randrange(0, len(tokens) - self.T - 1)
        return [self.sp.bos_id()] + tokens[at: at + self.T].tolist(), [1.0] * self.T

    def passkey(self):
        rng, sp = self.rng, self.sp
        length = int(round(2 ** rng.uniform(7.5, math.log2(self.T))))  # 180 .. T tokens, log-uniform
        key = passkey.random_key(rng)
        depth = rng.random()
        if rng.random() < 0.6:
            units = max(1, (length - OVERHEAD) // self.filler_tokens)
            before = int(units * depth)
            prompt, answer = passkey.document(key, passkey.filler(before), passkey.filler(units - before))
        else:
            chars = int(3.2 * max(length - OVERHEAD, 40))
            text = self.corpus.text
            at = rng.randrange(0, len(text) - chars - 1)
            window = text[at: at + chars]
            cut = window.rfind("\n", 0, int(depth * chars) + 1)
            cut = cut if cut > 0 else int(depth * chars)
            prompt, answer = passkey.document(key, window[:cut].strip(), window[cut:].strip())
        p = sp.encode(prompt)
        a = sp.encode(prompt + answer)[len(p):]
        ids = [sp.bos_id()] + p + a + [sp.eos_id()]
        w = [1.0] * len(p) + [self.answer_weight] * len(a) + [1.0]
        return self.fill(ids, w)

    def dialogue(self):
        rng, sp = self.rng, self.sp
        ids = []
        while len(ids) < self.T + 1:
            turns = []
            if rng.random() < 0.15:
                turns.append(rng.choice(ABOUT))
            for _ in range(rng.randint(1, 3)):
                qa = rng.choice(self.corpus.qa)
                turns.append((qa["q"], qa["a"]))
            text = "\n".join(f"User: {q}\nAssistant: {a}" for q, a in turns)
            ids += [sp.bos_id()] + sp.encode(text) + [sp.eos_id()]
        return ids, [1.0] * self.T


def passkey_eval_set(sp, lengths, per_length, seed, C):
    """Fixed pass-key documents with the repeated filler, as `mhla passkey` builds them:
    (ids padded to a multiple of C, index of the first answer token, answer ids, length)."""
    rng = random.Random(seed)
    unit = len(sp.encode(" " + passkey.FILLER))
    out = []
    for length in lengths:
        for _ in range(per_length):
            key = passkey.random_key(rng)
            units = max(1, (length - OVERHEAD) // unit)
            before = int(units * rng.random())
            prompt, answer = passkey.document(key, passkey.filler(before), passkey.filler(units - before))
            p = [sp.bos_id()] + sp.encode(prompt)
            a = sp.encode(prompt + answer)[len(p) - 1:]
            ids = p + a
            ids += [sp.eos_id()] * ((-len(ids)) % C)
            out.append((ids, len(p), a, length))
    return out
