"""Tests of moba_jax.data: tokenizer, packing, splits, order, resume, sources, errors, cache.

Run: ``python -m pytest tests/test_data.py -q`` (a few seconds, CPU only).
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from moba_jax.data import (BOS_ID, EOS_ID, PAD_ID, ByteTokenizer, DataConfigError,
                           build_datasets, default_data_config, write_array_record)
from moba_jax.data import packing

T = 32
B = 4
N_DOCS = 60


def _doc_text(i: int) -> str:
    rng = np.random.default_rng(i)
    words = ["alpha", "beta", "gamma", "δέλτα", "eps", "\n"]
    body = " ".join(rng.choice(words, size=int(rng.integers(3, 40))))
    return f"<doc-{i:04d}> {body} </doc-{i:04d}>"


@pytest.fixture
def text_dir(tmp_path):
    root = tmp_path / "corpus"
    for i in range(N_DOCS):
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc{i:04d}.txt").write_text(_doc_text(i), encoding="utf-8")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.txt").write_text("<doc-9999> never read")
    return root


def _cfg(tmp_path, **kw):
    cfg = default_data_config()
    cfg.cache_dir = str(tmp_path / "cache")
    cfg.val_fraction = 0.2
    cfg.update(kw)
    return cfg


def _build(cfg, **kw):
    args = dict(seq_len=T, global_batch=B, seed=0)
    args.update(kw)
    return build_datasets(cfg, **args)


def _doc_markers(rows: np.ndarray) -> set[int]:
    text = ByteTokenizer().decode(rows.reshape(-1))
    return {int(m) for m in re.findall(r"<doc-(\d{4})>", text)}


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- tokenizer -------------------------------------------------------------------------

def test_tokenizer_round_trip():
    tok = ByteTokenizer()
    assert tok.vocab_size == 259 and (tok.pad_id, tok.bos_id, tok.eos_id) == (256, 257, 258)
    text = "héllo wörld ✓ 𝔘"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text.encode("utf-8"))) == text
    wrapped = tok.encode(text, add_bos=True, add_eos=True)
    assert wrapped[0] == BOS_ID and wrapped[-1] == EOS_ID
    assert tok.decode(np.concatenate([wrapped, [PAD_ID, PAD_ID]])) == text  # specials skipped
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"  # cut multi-byte char -> replacement
    with pytest.raises(ValueError):
        tok.decode([259])


# --- packing and batch features --------------------------------------------------------

def _reference_features(row: np.ndarray):
    """Per-token loop version of packing.batch_from_rows for one row."""
    inputs = row[:-1]
    seg, pos = np.zeros(len(inputs), int), np.zeros(len(inputs), int)
    cur_seg, cur_pos = (0, -1) if inputs[0] == BOS_ID else (1, -1)
    for t, tok in enumerate(inputs):
        if tok == BOS_ID:
            cur_seg, cur_pos = cur_seg + 1, 0
        else:
            cur_pos += 1
        if tok != PAD_ID:
            seg[t], pos[t] = cur_seg, cur_pos
    return seg, pos


def test_batch_shapes_dtypes_and_shift(text_dir, tmp_path):
    ds = _build(_cfg(tmp_path, source="text_dir", path=str(text_dir)))
    batch = next(ds.train_iterator())
    dtypes = dict(inputs=np.int32, targets=np.int32, loss_mask=np.float32,
                  segment_ids=np.int32, positions=np.int32)
    assert set(batch) == set(dtypes)
    for k, dt in dtypes.items():
        assert batch[k].shape == (B, T) and batch[k].dtype == dt, k
    # targets are inputs shifted by one inside each packed row
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    rows = ds.train_rows
    full = packing.batch_from_rows(rows)
    np.testing.assert_array_equal(full["inputs"], rows[:, :-1])
    np.testing.assert_array_equal(full["targets"], rows[:, 1:])


def test_loss_mask_segments_positions(text_dir, tmp_path):
    ds = _build(_cfg(tmp_path, source="text_dir", path=str(text_dir)))
    for rows in (ds.train_rows, ds.val_rows):
        b = packing.batch_from_rows(rows)
        assert (b["targets"] == PAD_ID).any(), "the last row of a split is padded"
        np.testing.assert_array_equal(b["loss_mask"], (b["targets"] != PAD_ID).astype(np.float32))
        # padding only at the very end of the stream
        flat = rows.reshape(-1)
        first_pad = np.argmax(flat == PAD_ID)
        assert (flat[first_pad:] == PAD_ID).all()
        for r in range(len(rows)):
            seg, pos = _reference_features(rows[r])
            np.testing.assert_array_equal(b["segment_ids"][r], seg)
            np.testing.assert_array_equal(b["positions"][r], pos)
        is_bos = b["inputs"] == BOS_ID
        assert (b["positions"][is_bos] == 0).all()
        assert (b["positions"] < T).all()
        assert ((b["segment_ids"] == 0) == (b["inputs"] == PAD_ID)).all()


def test_unigram_entropy():
    stream = packing.build_stream([np.frombuffer(b"abab", np.uint8), np.frombuffer(b"ba", np.uint8)])
    assert packing.unigram_entropy_nats(stream) == pytest.approx(np.log(2))


# --- split, order, resume, processes ---------------------------------------------------

def test_split_disjoint_complete_and_deterministic(text_dir, tmp_path):
    cfg = _cfg(tmp_path, source="text_dir", path=str(text_dir))
    ds = _build(cfg)
    train, val = _doc_markers(ds.train_rows), _doc_markers(ds.val_rows)
    assert train and val and not train & val
    assert train | val == set(range(N_DOCS))  # hidden folder skipped
    assert ds.stats["n_train_docs"] == len(train) and ds.stats["n_val_docs"] == len(val)
    expected_val = {i for i in range(N_DOCS)
                    if packing.is_validation(f"part{i % 3}/doc{i:04d}.txt", 0.2)}
    assert val == expected_val
    # independent of seed and of the cache; val batches identical across seeds
    other = _build(_cfg(tmp_path / "other", source="text_dir", path=str(text_dir)), seed=7)
    assert _doc_markers(other.val_rows) == val
    for a, b in zip(ds.val_batches(), other.val_batches(), strict=True):
        _assert_batches_equal(a, b)


def test_val_batches_cover_val_rows_once(text_dir, tmp_path):
    ds = _build(_cfg(tmp_path, source="text_dir", path=str(text_dir)))
    vb = ds.val_batches()
    assert len(vb) == ds.num_val_batches == -(-len(ds.val_rows) // B)
    inputs = np.concatenate([b["inputs"] for b in vb])
    np.testing.assert_array_equal(inputs[:len(ds.val_rows)], ds.val_rows[:, :-1])
    assert (inputs[len(ds.val_rows):] == PAD_ID).all()
    assert len(ds.val_batches(max_batches=1)) == 1


def test_seed_determines_order(text_dir, tmp_path):
    cfg = _cfg(tmp_path, source="text_dir", path=str(text_dir))
    take = lambda ds: [next(it) for it in [ds.train_iterator()] for _ in range(6)]
    a, a2, b = take(_build(cfg, seed=1)), take(_build(cfg, seed=1)), take(_build(cfg, seed=2))
    for x, y in zip(a, a2):
        _assert_batches_equal(x, y)
    assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))


def test_epochs_cover_every_row_and_reshuffle(text_dir, tmp_path):
    ds = _build(_cfg(tmp_path, source="text_dir", path=str(text_dir), val_fraction=0.1))
    n = len(ds.train_rows)
    order0, order1 = ds._epoch_order(0), ds._epoch_order(1)
    assert sorted(order0) == list(range(n)) and not np.array_equal(order0, order1)
    steps = n // B
    seen = np.concatenate([ds.batch_at(s)["inputs"] for s in range(steps)])
    np.testing.assert_array_equal(seen, ds.train_rows[order0[:steps * B], :-1])


def test_resume_from_state(text_dir, tmp_path):
    ds = _build(_cfg(tmp_path, source="text_dir", path=str(text_dir)), seed=3)
    it = ds.train_iterator()
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(4)]
    fresh = _build(_cfg(tmp_path, source="text_dir", path=str(text_dir)), seed=3).train_iterator()
    fresh.set_state(state)
    for want in expected:
        _assert_batches_equal(next(fresh), want)
    _assert_batches_equal(expected[0], ds.batch_at(5))


def test_process_slices_concatenate_to_global_batch(text_dir, tmp_path):
    cfg = _cfg(tmp_path, source="text_dir", path=str(text_dir))
    whole = _build(cfg, global_batch=4)
    parts = [_build(cfg, global_batch=4, process_index=p, process_count=2) for p in range(2)]
    assert parts[0].local_batch == 2
    its = [whole.train_iterator()] + [p.train_iterator() for p in parts]
    for _ in range(3):
        g, l0, l1 = (next(it) for it in its)
        for k in g:
            np.testing.assert_array_equal(np.concatenate([l0[k], l1[k]]), g[k], err_msg=k)
    for g, l0, l1 in zip(whole.val_batches(), *(p.val_batches() for p in parts), strict=True):
        np.testing.assert_array_equal(np.concatenate([l0["inputs"], l1["inputs"]]), g["inputs"])


# --- sources ---------------------------------------------------------------------------

def test_stdlib_source(tmp_path):
    cfg = _cfg(tmp_path, max_docs=40, max_doc_bytes=2000)
    ds = _build(cfg, seq_len=64, global_batch=8)
    s = ds.stats
    assert s["source"].startswith("stdlib:")
    assert s["n_train_docs"] + s["n_val_docs"] == 40
    assert s["n_train_tokens"] + s["n_val_tokens"] <= 40 * 2002
    assert 2.0 < s["unigram_entropy_nats"] < np.log(256)
    assert "import" in ByteTokenizer().decode(ds.train_rows.reshape(-1))


def test_jsonl_source(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"body": _doc_text(i), "id": i}) for i in range(N_DOCS)]
    path.write_text("\n".join(lines[:30]) + "\n\n" + "\n".join(lines[30:]) + "\n")
    ds = _build(_cfg(tmp_path, source="jsonl", path=str(path), text_field="body"))
    train, val = _doc_markers(ds.train_rows), _doc_markers(ds.val_rows)
    assert train | val == set(range(N_DOCS)) and not train & val
    # a glob and a folder find the same file
    for p in (str(tmp_path / "*.jsonl"), str(tmp_path)):
        other = _build(_cfg(tmp_path, source="jsonl", path=p, text_field="body"))
        np.testing.assert_array_equal(other.train_rows, ds.train_rows)


def test_array_record_source(tmp_path):
    tok = ByteTokenizer()
    docs = [tok.encode(_doc_text(i)) for i in range(N_DOCS)]
    write_array_record(tmp_path / "a.array_record", docs[:25])
    write_array_record(tmp_path / "b.array_record", docs[25:])
    ds = _build(_cfg(tmp_path, source="array_record", path=str(tmp_path / "*.array_record")))
    train, val = _doc_markers(ds.train_rows), _doc_markers(ds.val_rows)
    assert train | val == set(range(N_DOCS)) and not train & val
    assert ds.stats["n_train_tokens"] + ds.stats["n_val_tokens"] == sum(len(d) + 2 for d in docs)


# --- errors ----------------------------------------------------------------------------

def test_bad_configs_raise(tmp_path, text_dir):
    def raises(match, build_kw=None, **cfg_kw):
        with pytest.raises(DataConfigError, match=match) as e:
            _build(_cfg(tmp_path, **cfg_kw), **(build_kw or {}))
        assert "\n" not in str(e.value)

    assert issubclass(DataConfigError, ValueError)
    raises(r"data\.source='wiki' is unknown", source="wiki")
    raises(r"data\.path is empty", source="text_dir")
    raises(r"data\.path=.* matches no files", source="text_dir", path=str(text_dir),
           pattern="**/*.md")
    raises(r"data\.path=.* matches no files", source="jsonl", path=str(tmp_path / "nope.jsonl"))
    raises(r"not a folder", source="text_dir", path=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    raises(r"no non-empty documents", source="text_dir", path=str(empty))
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "ok"}\n{"content": "no text key"}\n')
    raises(r"data\.text_field='text' is missing in bad\.jsonl line 2", source="jsonl",
           path=str(bad_jsonl))
    not_json = tmp_path / "notjson.jsonl"
    not_json.write_text("{oops\n")
    raises(r"data\.path: .*notjson\.jsonl is not valid JSON at line 1 column 2 \(Expecting "
           r"property name enclosed in double quotes\); every non-empty line .* fix or remove",
           source="jsonl", path=str(not_json))
    # A raw tab inside a string: json's own message stops at "Invalid control character at".
    ctrl = tmp_path / "ctrl.jsonl"
    ctrl.write_text('{"text": "ok"}\n{"text": "a\tb"}\n')
    col = ctrl.read_text().splitlines()[1].index("\t") + 1
    raises(re.escape(f"{ctrl} is not valid JSON at line 2 column {col} (Invalid control "
                     "character); every non-empty line"), source="jsonl", path=str(ctrl))
    for size in (10, 10_000):  # the reader fails differently on tiny and larger files
        garbage = tmp_path / f"g{size}.array_record"
        garbage.write_bytes(b"not an array record" * size)
        raises(r"cannot read ArrayRecord file g\d+\.array_record", source="array_record",
               path=str(garbage))
    write_array_record(tmp_path / "range.array_record", [np.array([1, 300])])
    raises(r"outside \[0, 256\)", source="array_record", path=str(tmp_path / "range.array_record"))
    raises(r"data\.val_fraction=0\.001 leaves the validation split empty", source="text_dir",
           path=str(text_dir), val_fraction=0.001)
    raises(r"data\.val_fraction=1\.5 must lie", val_fraction=1.5)
    raises(r"train split has \d+ sequences .* global_batch=4096", {"global_batch": 4096},
           source="text_dir", path=str(text_dir))
    raises(r"global_batch=5 is not a positive multiple of process_count=2",
           {"global_batch": 5, "process_count": 2}, source="text_dir", path=str(text_dir))
    raises(r"unknown field", sourc="stdlib")


# --- cache -----------------------------------------------------------------------------

def test_cache_hit_is_identical(text_dir, tmp_path):
    cfg = _cfg(tmp_path, source="text_dir", path=str(text_dir))
    first = _build(cfg)
    assert not first.stats["cache_hit"] and os.path.isfile(first.stats["cache_file"])
    second = _build(cfg, seq_len=T)
    assert second.stats["cache_hit"]
    np.testing.assert_array_equal(first.train_rows, second.train_rows)
    np.testing.assert_array_equal(first.val_rows, second.val_rows)
    strip = lambda s: {k: v for k, v in s.items() if k != "cache_hit"}
    assert strip(first.stats) == strip(second.stats)
    # another seq_len reuses the same entry; a changed corpus does not
    assert _build(cfg, seq_len=2 * T).stats["cache_hit"]
    (text_dir / "part0" / "new.txt").write_text("<doc-0100> new")
    changed = _build(cfg)
    assert not changed.stats["cache_hit"] and changed.stats["cache_file"] != first.stats["cache_file"]
    # no temporary files are left behind
    assert not [f for f in os.listdir(tmp_path / "cache" / "data") if f.endswith(".tmp")]


def test_corrupt_cache_entry_is_rebuilt(text_dir, tmp_path):
    cfg = _cfg(tmp_path, source="text_dir", path=str(text_dir))
    first = _build(cfg)
    with open(first.stats["cache_file"], "wb") as f:
        f.write(b"truncated")
    again = _build(cfg)
    assert not again.stats["cache_hit"]
    np.testing.assert_array_equal(first.train_rows, again.train_rows)
