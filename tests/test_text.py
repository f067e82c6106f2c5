import numpy as np
import pytest
import torch
from conftest import shared

from rnnlib.datasets import tinyshakespeare_path
from rnnlib.errors import DataError
from rnnlib.text import UNK, Vocab, random_windows, read_text, split_text, stream_batches


def test_vocab_roundtrip_and_json():
    text = read_text(tinyshakespeare_path())
    v = Vocab.from_text(text)
    assert len(v) == 65 and len(text) == 1115394
    ids = v.encode(text[:5000])
    assert v.decode(ids) == text[:5000]
    assert Vocab.from_dict(v.to_dict()) == v


def test_unknown_characters_error_or_token():
    v = Vocab.from_text("abc")
    with pytest.raises(DataError, match=r"2 character\(s\) not in the vocabulary: 'z' \(U\+007A, 2x\), 'é'"):
        v.encode("abzzé")
    t = Vocab.from_text("abc", unknown="token")
    ids = t.encode("abz")
    assert t.chars[0] == UNK and ids.tolist() == [1, 2, 0]


def test_cjk_corpus_vocab():
    text = read_text(shared("text/hongloumeng_pg24264.txt"))
    v = Vocab.from_text(text)
    assert len(v) == 4345
    ids = v.encode(text)
    assert len(ids) == len(text) == 906091 and v.decode(ids[:2000]) == text[:2000]
    again = Vocab.from_dict(v.to_dict())
    assert again.encode("紅樓夢").tolist() == v.encode("紅樓夢").tolist()
    assert "紅樓夢" in text


def test_small_cjk_vocab_without_shared_data():
    text = "滿紙荒唐言，一把辛酸淚。都云作者痴，誰解其中味？"
    v = Vocab.from_text(text)
    assert len(v) == len(set(text))
    assert v.decode(v.encode(text)) == text


def test_non_utf8_and_missing_files(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: not UTF-8 text .* at byte 3"):
        read_text(p)
    with pytest.raises(DataError, match="no such file"):
        read_text(tmp_path / "nope.txt")


def test_split_is_chronological():
    ids = np.arange(100)
    tr, va = split_text(ids, 0.1)
    assert tr.tolist() == list(range(90)) and va.tolist() == list(range(90, 100))


def test_stream_batches_continue_row_by_row():
    ids = np.arange(1000)
    batches = stream_batches(ids, batch_size=4, seq_len=10)
    x0, y0 = batches[0]
    x1, _ = batches[1]
    assert x0.shape == (4, 10)
    assert torch.equal(y0, x0 + 1)  # targets shifted by one
    assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # chunk k+1 continues chunk k in every row
    assert x0[1, 0] == 249  # row r starts at r * (len-1)//batch


def test_random_windows_are_seeded():
    ids = np.arange(500)
    a = random_windows(ids, 3, 8, 2, torch.Generator().manual_seed(1))
    b = random_windows(ids, 3, 8, 2, torch.Generator().manual_seed(1))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert torch.equal(a[0][1], a[0][0] + 1)
