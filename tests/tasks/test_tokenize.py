"""tokenize_for_training (label masking, truncation rule, EOS, BOS) and make_collator."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset, load_from_disk
from tokenizers import Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from quantcl.errors import ConfigError
from quantcl.tasks import IGNORE_INDEX, make_collator, tokenize_for_training
from quantcl.tiny import make_char_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_char_tokenizer()


def ids(tok, text: str) -> list[int]:
    """Char tokenizer: one id per character."""
    return [tok.convert_tokens_to_ids(c) for c in text]


def rows(*pairs: tuple[str, str], **extra) -> Dataset:
    data = {"prompt": [p for p, _ in pairs], "target": [t for _, t in pairs]}
    data.update(extra)
    return Dataset.from_dict(data)


def test_labels_mask_the_prompt_and_keep_target_and_eos(tok):
    out = tokenize_for_training(rows(("Q:", " 42")), tok, max_length=64)[0]
    eos = tok.eos_token_id
    assert out["input_ids"] == ids(tok, "Q:") + ids(tok, " 42") + [eos]
    assert out["labels"] == [IGNORE_INDEX, IGNORE_INDEX] + ids(tok, " 42") + [eos]
    assert out["attention_mask"] == [1] * 6


def test_add_eos_false_appends_nothing(tok):
    out = tokenize_for_training(rows(("ab", "c")), tok, max_length=64, add_eos=False)[0]
    assert out["input_ids"] == ids(tok, "abc")
    assert out["labels"] == [IGNORE_INDEX, IGNORE_INDEX] + ids(tok, "c")


def test_other_columns_are_dropped(tok):
    out = tokenize_for_training(rows(("a", "b"), source_task=["nlu"]), tok, max_length=8)
    assert out.column_names == ["input_ids", "attention_mask", "labels"]


def test_long_prompt_is_cut_from_the_left_and_target_kept_whole(tok):
    out = tokenize_for_training(rows(("abcdef", "xy")), tok, max_length=5)[0]
    assert out["input_ids"] == ids(tok, "efxy") + [tok.eos_token_id]
    assert out["labels"] == [IGNORE_INDEX] * 2 + ids(tok, "xy") + [tok.eos_token_id]


def test_target_longer_than_max_length_keeps_its_first_tokens_and_no_prompt(tok):
    out = tokenize_for_training(rows(("prompt", "vwxyz")), tok, max_length=4)[0]
    assert out["input_ids"] == ids(tok, "vwxy")
    assert out["labels"] == ids(tok, "vwxy")


def test_target_plus_eos_exactly_filling_max_length_drops_the_prompt(tok):
    out = tokenize_for_training(rows(("ab", "xyz")), tok, max_length=4)[0]
    assert out["input_ids"] == ids(tok, "xyz") + [tok.eos_token_id]


def test_short_rows_are_not_padded_or_cut(tok):
    data = tokenize_for_training(rows(("a", "b"), ("abc", "de")), tok, max_length=32)
    assert [len(x) for x in data["input_ids"]] == [3, 6]


@pytest.fixture(scope="module")
def bos_tok():
    """The char tokenizer, but adding BOS in front of every text like Llama tokenizers do."""
    t = make_char_tokenizer()
    t.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", t.bos_token_id)]
    )
    return t


def test_bos_is_added_once_before_the_prompt(bos_tok):
    out = tokenize_for_training(rows(("ab", "c")), bos_tok, max_length=16)[0]
    assert out["input_ids"] == [bos_tok.bos_token_id] + ids(bos_tok, "abc") + [bos_tok.eos_token_id]
    assert out["labels"][:3] == [IGNORE_INDEX] * 3


def test_bos_rendered_by_a_chat_template_is_not_doubled(bos_tok):
    out = tokenize_for_training(rows(("<s>user: hi", "c")), bos_tok, max_length=32)[0]
    assert out["input_ids"][:2] == [bos_tok.bos_token_id] + ids(bos_tok, "u")


def test_left_truncation_keeps_the_bos(bos_tok):
    out = tokenize_for_training(rows(("abcdef", "x")), bos_tok, max_length=5)[0]
    assert out["input_ids"] == [bos_tok.bos_token_id] + ids(bos_tok, "ef") + ids(bos_tok, "x") + [bos_tok.eos_token_id]


def test_prompt_and_target_are_encoded_apart_so_merges_never_cross_the_boundary():
    # A BPE that merges "a"+"b": encoded jointly, "ab" would be one token spanning the seam.
    vocab = {"</s>": 0, "a": 1, "b": 2, "ab": 3}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    bpe = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")
    assert bpe("ab", add_special_tokens=False)["input_ids"] == [3]
    out = tokenize_for_training(rows(("a", "b")), bpe, max_length=8)[0]
    assert out["input_ids"] == [1, 2, 0]
    assert out["labels"] == [IGNORE_INDEX, 2, 0]


def test_on_disk_datasets_reuse_the_cached_tokenization(tok, tmp_path):
    rows(("ab", "c"), ("de", "f")).save_to_disk(str(tmp_path / "rows"))
    data = load_from_disk(str(tmp_path / "rows"))
    first = tokenize_for_training(data, tok, max_length=8)
    second = tokenize_for_training(data, tok, max_length=8)
    assert first.cache_files and first.cache_files == second.cache_files
    assert tokenize_for_training(data, tok, max_length=3).cache_files != first.cache_files


def test_missing_columns_are_named(tok):
    with pytest.raises(ConfigError, match=r"missing \['target'\]"):
        tokenize_for_training(Dataset.from_dict({"prompt": ["a"]}), tok, max_length=8)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_max_length_must_be_a_positive_int(tok, bad):
    with pytest.raises(ConfigError, match="max_length must be a positive int"):
        tokenize_for_training(rows(("a", "b")), tok, max_length=bad)


# collator --------------------------------------------------------------------------------
FEATURES = [
    {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE_INDEX, 6, 7]},
    {"input_ids": [8], "attention_mask": [1], "labels": [8]},
]


def test_collator_right_pads_with_pad_zero_and_ignore_index(tok):
    batch = make_collator(tok)(FEATURES)
    pad = tok.pad_token_id
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert all(v.dtype == torch.long for v in batch.values())


def test_collator_pads_with_eos_when_the_tokenizer_has_no_pad_token():
    nopad = make_char_tokenizer(with_pad=False)
    assert nopad.pad_token_id is None
    batch = make_collator(nopad)(FEATURES)
    assert batch["input_ids"][1].tolist() == [8, nopad.eos_token_id, nopad.eos_token_id]
    assert nopad.pad_token_id is None  # the tokenizer is left as it was


def test_collator_pads_to_a_multiple(tok):
    batch = make_collator(tok, pad_to_multiple_of=4)(FEATURES)
    assert batch["input_ids"].shape == (2, 4)


def test_collator_batches_tokenized_rows_end_to_end(tok):
    data = tokenize_for_training(rows(("ab", "c"), ("d", "efg")), tok, max_length=16)
    batch = make_collator(tok)([data[0], data[1]])
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX] + ids(tok, "c") + [tok.eos_token_id, IGNORE_INDEX],
        [IGNORE_INDEX] + ids(tok, "efg") + [tok.eos_token_id],
    ]
