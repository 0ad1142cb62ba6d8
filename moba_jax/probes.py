"""Synthetic long-context retrieval probes: needle in a haystack and MQAR.

Both probes are scored teacher-forced, as multiple choice over the answer
alphabet (the ten digits): at each answer position the model's prediction is
the digit with the highest logit. Chance is therefore 10% per digit, whatever
the vocabulary; a trial counts as correct only if every digit of its answer is.

- **Needle in a haystack**: held-out text as filler, with
  ``"The pass key is NNNNN. Remember it."`` inserted at a relative depth; the
  sequence ends with ``"What is the pass key? The pass key is NNNNN"``.
  Reported per (context length, depth) as the fraction of trials with every
  digit right (chance 1e-5) and the fraction of digits right (chance 0.1).
- **Multi-query associative recall**: ``n`` pairs ``"xy:D"`` (distinct two-letter
  keys, one digit each) fill the context (separated by filler), then every key
  is queried again in random order (``"xy:"``). Accuracy per (context
  length, number of pairs).

A probe takes ``logits_fn(tokens_BT) -> logits_BTV``; a model is
``lambda t: spec.apply(params, t)``. These are where block-sparse attention can
fail: the answer sits in one block that the gate must select.
"""
from __future__ import annotations

import numpy as np

from moba_jax.data import BOS_ID

DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8).astype(np.int32)


def _bytes(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8).astype(np.int32)


def _filler(filler: np.ndarray, n: int, rng) -> np.ndarray:
    if n <= 0:
        return np.zeros(0, np.int32)
    start = int(rng.integers(0, max(1, len(filler) - n)))
    out = filler[start:start + n]
    while len(out) < n:
        out = np.concatenate([out, filler[:n - len(out)]])
    return out.astype(np.int32)


def _score(logits_fn, seqs: list[np.ndarray], answers: list[list[int]]) -> np.ndarray:
    """Per-trial correctness: every answer position's best digit is the right one."""
    t = max(len(s) for s in seqs)
    toks = np.zeros((len(seqs), t), np.int32)
    for i, s in enumerate(seqs):
        toks[i, :len(s)] = s
    logits = np.asarray(logits_fn(toks))
    ok = np.ones(len(seqs), bool)
    hits = []
    for i, pos in enumerate(answers):
        for p in pos:     # logits at p-1 predict the token at p
            pred = DIGITS[np.argmax(logits[i, p - 1, DIGITS])]
            ok[i] &= pred == toks[i, p]
            hits.append(pred == toks[i, p])
    return ok, float(np.mean(hits))


def needle_sequences(filler: np.ndarray, length: int, depth: float, rng, n_digits: int = 5):
    key = "".join(str(d) for d in rng.integers(0, 10, n_digits))
    needle = _bytes(f"\nThe pass key is {key}. Remember it.\n")
    question = _bytes(f"\nWhat is the pass key? The pass key is {key}")
    room = length - 1 - len(needle) - len(question)
    if room < 0:
        raise ValueError(f"needle probe: context length {length} is too short for the needle "
                         f"and the question ({len(needle) + len(question) + 1} tokens)")
    hay = _filler(filler, room, rng)
    cut = int(round(depth * room))
    seq = np.concatenate([[BOS_ID], hay[:cut], needle, hay[cut:], question]).astype(np.int32)
    answer = list(range(len(seq) - n_digits, len(seq)))
    return seq, answer


def needle_probe(logits_fn, filler: np.ndarray, lengths, depths, trials: int = 8,
                 seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    acc = np.zeros((len(lengths), len(depths)))
    digit_acc = np.zeros_like(acc)
    for i, length in enumerate(lengths):
        for j, depth in enumerate(depths):
            seqs, answers = zip(*(needle_sequences(filler, int(length), float(depth), rng)
                                  for _ in range(trials)))
            ok, digits = _score(logits_fn, list(seqs), list(answers))
            acc[i, j], digit_acc[i, j] = ok.mean(), digits
    return {"lengths": [int(x) for x in lengths], "depths": [float(d) for d in depths],
            "accuracy": acc.tolist(), "digit_accuracy": digit_acc.tolist(), "trials": trials,
            "chance": 0.1 ** 5, "digit_chance": 0.1}


def mqar_sequences(filler: np.ndarray, length: int, n_pairs: int, rng):
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
    if n_pairs > 26 * 26:
        raise ValueError(f"mqar probe: at most {26 * 26} distinct keys, asked for {n_pairs}")
    codes = rng.choice(26 * 26, size=n_pairs, replace=False)
    keys = [bytes([letters[c // 26], letters[c % 26]]).decode() for c in codes]
    vals = rng.integers(0, 10, n_pairs)
    defs = [_bytes(f" {k}:{v}") for k, v in zip(keys, vals)]
    order = rng.permutation(n_pairs)
    queries = [_bytes(f" {keys[i]}:{vals[i]}") for i in order]
    fixed = 1 + sum(map(len, defs)) + 1 + sum(map(len, queries))
    room = length - fixed
    if room < 0:
        raise ValueError(f"mqar probe: context length {length} is too short for {n_pairs} pairs "
                         f"({fixed} tokens)")
    # Spread the definitions through the first part, filler between them.
    gaps = np.diff(np.sort(np.r_[0, rng.integers(0, room + 1, n_pairs), room]))
    hay = _filler(filler, room, rng)
    parts, off = [np.array([BOS_ID])], 0
    for d, g in zip(defs, gaps[:-1]):
        parts += [hay[off:off + g], d]
        off += g
    parts += [hay[off:], _bytes("\n")]
    seq = np.concatenate(parts + queries).astype(np.int32)
    answers, pos = [], len(seq) - sum(map(len, queries))
    for q in queries:
        pos += len(q)
        answers.append(pos - 1)
    return seq, answers


def mqar_probe(logits_fn, filler: np.ndarray, lengths, pairs, trials: int = 8,
               seed: int = 0) -> dict:
    """Accuracy = fraction of queries answered correctly (chance 0.1)."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((len(lengths), len(pairs)))
    for i, length in enumerate(lengths):
        for j, n in enumerate(pairs):
            seqs, answers = [], []
            for _ in range(trials):
                s, a = mqar_sequences(filler, int(length), int(n), rng)
                seqs.append(s)
                answers.append(a)
            _, acc[i, j] = _score(logits_fn, seqs, answers)
    return {"lengths": [int(x) for x in lengths], "pairs": [int(p) for p in pairs],
            "accuracy": acc.tolist(), "trials": trials, "chance": 0.1}


def induction_oracle(vocab: int, min_match: int = 3, max_match: int = 32):
    """A "model built to copy": an ideal induction head.

    At each position it finds the earlier position whose preceding tokens match
    the current suffix for longest (at least ``min_match``, ties to the most
    recent) and predicts the token that followed it. Used to check that the
    probes are solvable and scored correctly.
    """
    def logits_fn(tokens_BT):
        tokens_BT = np.asarray(tokens_BT)
        b, t = tokens_BT.shape
        out = np.zeros((b, t, vocab), np.float32)
        for i in range(b):
            seq = tokens_BT[i]
            for p in range(1, t):
                j = np.arange(p)                       # candidate earlier ends
                length = np.zeros(p, np.int64)
                alive = np.ones(p, bool)
                for k in range(min(max_match, p)):
                    ok = alive & (j - k >= 0)
                    ok[ok] = seq[j[ok] - k] == seq[p - k]
                    alive = ok
                    length += alive
                    if not alive.any():
                        break
                best = length.max()
                if best >= min_match:
                    jj = np.flatnonzero(length == best)[-1]
                    out[i, p, seq[jj + 1]] = 10.0
        return out
    return logits_fn
