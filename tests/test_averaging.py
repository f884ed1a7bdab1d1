"""quantcl.averaging: LAWA, EMA, soup and greedy soup on tiny models and hand-made weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from quantcl.averaging import EMA, LAWA, greedy_soup, load_trainable, soup, trainable_state_dict
from quantcl.errors import ConfigError


def _lora_model(model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


class _Rows(torch.utils.data.Dataset):
    def __init__(self, vocab: int, n: int = 16, length: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i], "attention_mask": torch.ones_like(self.ids[i])}


class _Recorder(TrainerCallback):
    """Records the trainable weights at the same steps as LAWA, independently of quantcl."""

    def __init__(self, every: int) -> None:
        self.every, self.snaps = every, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.snaps.append({n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad})


def _train(model, tmp_path, callbacks, steps: int) -> None:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=5e-2, use_cpu=True, report_to=[], save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=_Rows(model.config.vocab_size), callbacks=callbacks).train()


# ----------------------------------------------------------------------------- LAWA


def test_lawa_on_lora_averages_the_last_window_snapshots_of_adapter_weights(tiny_model_dir, tmp_path):
    model = _lora_model(tiny_model_dir)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lawa, rec = LAWA(every=2, window=3), _Recorder(every=2)
    _train(model, tmp_path, [lawa, rec], steps=10)

    assert len(rec.snaps) == 5 and lawa.snapshot_steps == [6, 8, 10]
    kept = rec.snaps[-3:]
    for got, want in zip(lawa.snapshots, kept):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    avg = lawa.averaged_state_dict()
    assert set(avg) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert avg and all("lora_" in k for k in avg)  # only the adapter
    for k in avg:
        want = torch.stack([s[k] for s in kept]).mean(dim=0)
        assert torch.allclose(avg[k], want, atol=0, rtol=0)
    # training moved the adapter, so averaging all 5 snapshots would give something else
    assert any(not torch.equal(avg[k], torch.stack([s[k] for s in rec.snaps]).mean(dim=0)) for k in avg)

    current = trainable_state_dict(model)
    averaged_model = lawa.apply(model)
    assert averaged_model is not model
    for n, p in model.named_parameters():  # the user's model is untouched
        assert torch.equal(p.detach(), current[n] if p.requires_grad else frozen_before[n])
    for n, p in averaged_model.named_parameters():
        assert torch.equal(p.detach(), avg[n] if p.requires_grad else frozen_before[n])


def test_lawa_full_model_snapshots_every_trainable_parameter_and_only_on_multiples_of_every():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    lawa = LAWA(every=3, window=2)

    class S:
        global_step = 0

    for step, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], start=1):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        S.global_step = step
        lawa.on_step_end(None, S, None, model=model)
    assert lawa.snapshot_steps == [3, 6]
    avg = lawa.averaged_state_dict()
    assert set(avg) == {"0.weight", "0.bias", "1.weight"}
    assert all(torch.equal(t, torch.full_like(t, 4.5)) for t in avg.values())


def test_lawa_without_snapshot_and_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="no snapshot"):
        LAWA(every=1, window=1).averaged_state_dict()
    with pytest.raises(ConfigError, match="no snapshot"):
        LAWA(every=1, window=1).apply(nn.Linear(1, 1))
    for kwargs in ({"every": 0, "window": 1}, {"every": 1, "window": 0}, {"every": 1.5, "window": 2},
                   {"every": True, "window": 2}):
        with pytest.raises(ConfigError):
            LAWA(**kwargs)


# ----------------------------------------------------------------------------- EMA


def test_ema_matches_the_closed_form_on_known_values():
    decay = 0.8
    model = nn.Linear(3, 1, bias=False)
    ema = EMA(decay=decay, every=2)

    class S:
        global_step = 0

    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    for step, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        S.global_step = step
        ema.on_step_end(None, S, None, model=model)
    seen = values[1::2]  # steps 2, 4, 6, 8: 1, 3, 5, 7
    want = seen[0]  # AveragedModel's first update copies
    for v in seen[1:]:
        want = decay * want + (1 - decay) * v
    closed = decay ** 3 * 1 + (1 - decay) * (decay ** 2 * 3 + decay * 5 + 7)
    assert want == pytest.approx(closed)
    assert ema.num_updates == 4
    got = ema.averaged_state_dict()["weight"]
    assert torch.allclose(got, torch.full((1, 3), want), atol=1e-6, rtol=0)
    copy_ = ema.apply(model)
    assert torch.allclose(copy_.weight, got) and torch.equal(model.weight, torch.full((1, 3), 7.0))


def test_ema_on_lora_holds_only_adapter_weights_and_tracks_training(tiny_model_dir, tmp_path):
    model = _lora_model(tiny_model_dir)
    ema = EMA(decay=0.5)
    _train(model, tmp_path, [ema], steps=4)
    avg = ema.averaged_state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(avg) == trainable and all("lora_" in k for k in avg)
    held = sum(p.numel() for p in ema._averaged.module.parameters())
    assert held == sum(p.numel() for n, p in model.named_parameters() if n in trainable)  # no base copy
    assert ema.num_updates == 4
    assert any(not torch.equal(avg[n], p.detach()) for n, p in model.named_parameters() if n in trainable)


def test_ema_bad_arguments_and_empty_average_raise_config_error():
    for kwargs in ({"decay": 1.5}, {"decay": 1.0}, {"decay": 0.0}, {"decay": -0.1}, {"decay": "0.9"},
                   {"decay": 0.9, "every": 0}):
        with pytest.raises(ConfigError):
            EMA(**kwargs)
    with pytest.raises(ConfigError, match="no average"):
        EMA(decay=0.9).averaged_state_dict()


# ----------------------------------------------------------------------------- soups


def test_soup_is_the_elementwise_mean_and_weighted_mean():
    g = torch.Generator().manual_seed(1)
    sds = [{"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)} for _ in range(3)]
    got = soup(sds)
    for k in ("a", "b"):
        assert torch.allclose(got[k], (sds[0][k] + sds[1][k] + sds[2][k]) / 3, atol=1e-6)
    weighted = soup(sds, weights=[1, 0, 3])
    assert torch.allclose(weighted["a"], (sds[0]["a"] + 3 * sds[2]["a"]) / 4, atol=1e-6)
    # modules contribute their trainable parameters
    m1, m2 = nn.Linear(2, 2), nn.Linear(2, 2)
    assert torch.allclose(soup([m1, m2])["weight"], (m1.weight + m2.weight).detach() / 2)
    # bf16 is averaged in float32 and returned as bf16
    half = soup([{"w": torch.tensor([1.0], dtype=torch.bfloat16)}, {"w": torch.tensor([2.0], dtype=torch.bfloat16)}])
    assert half["w"].dtype == torch.bfloat16 and half["w"].item() == 1.5


def test_soup_refuses_mismatched_keys_shapes_and_bad_weights():
    a = {"x": torch.zeros(2), "y": torch.zeros(3)}
    with pytest.raises(ConfigError, match="'y'"):
        soup([a, {"x": torch.zeros(2)}])
    with pytest.raises(ConfigError, match="'z'"):
        soup([a, {**a, "z": torch.zeros(1)}])
    with pytest.raises(ConfigError, match=r"'y' has shape \(3,\)"):
        soup([a, {"x": torch.zeros(2), "y": torch.zeros(4)}])
    with pytest.raises(ConfigError):
        soup([])
    with pytest.raises(ConfigError):
        soup([a, a], weights=[1])
    with pytest.raises(ConfigError):
        soup([a, a], weights=[0, 0])
    with pytest.raises(ConfigError):
        soup([a, a], weights=[-1, 2])
    with pytest.raises(ConfigError):
        soup([a, {"x": torch.zeros(2), "y": "nope"}])


def _quadratic(target: torch.Tensor):
    return lambda sd: float(((sd["w"] - target) ** 2).sum())


@pytest.mark.parametrize("seed", range(6))
def test_greedy_soup_is_never_worse_than_its_best_ingredient(seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(4, generator=g)
    cands = [{"w": target + torch.randn(4, generator=g) * (1 + i)} for i in range(5)]
    loss = _quadratic(target)
    sd, chosen = greedy_soup(cands, loss)
    best = min(loss(c) for c in cands)
    assert loss(sd) <= best + 1e-12
    assert chosen[0] == min(range(5), key=lambda i: loss(cands[i]))
    assert torch.allclose(sd["w"], soup([cands[i] for i in chosen])["w"])


def test_greedy_soup_picks_the_expected_subset():
    # losses alone: 0 -> 1, 1 -> 1.21, 2 -> 4, 3 -> 100. Soup {0,1} = -0.05 (loss 0.0025): kept.
    # {0,1,2} = 0.63 (0.40) > 0.0025: refused. {0,1,3} = 3.3: refused.
    cands = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([-1.1])}, {"w": torch.tensor([2.0])},
             {"w": torch.tensor([10.0])}]
    calls = []

    def loss(sd):
        calls.append(sd["w"].item())
        return float(sd["w"].item() ** 2)

    sd, chosen = greedy_soup([cands[3], cands[2], cands[1], cands[0]], loss)
    assert chosen == [3, 2]  # indices into the list given, in the order added
    assert sd["w"].item() == pytest.approx(-0.05)
    assert len(calls) == 2 * 4 - 1


def test_greedy_soup_reads_saved_adapter_directories(tiny_model_dir, tmp_path):
    model = _lora_model(tiny_model_dir)
    dirs = []
    for i in range(2):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.fill_(float(i + 1))
        model.save_pretrained(tmp_path / f"a{i}")
        dirs.append(tmp_path / f"a{i}")
    sd, chosen = greedy_soup([str(dirs[0]), dirs[1]], lambda s: float(sum((t - 1.4).abs().sum() for t in s.values())))
    assert chosen == [0, 1] and sd and all(torch.all(t == 1.5) for t in sd.values())
    assert all("lora_" in k for k in sd)
    assert set(soup(dirs)) == set(sd)
    with pytest.raises(ConfigError, match="adapter"):
        soup([tmp_path])


def test_greedy_soup_bad_inputs_raise_config_error():
    with pytest.raises(ConfigError):
        greedy_soup([], lambda sd: 0.0)
    with pytest.raises(ConfigError):
        greedy_soup([{"w": torch.zeros(1)}], "not callable")
    with pytest.raises(ConfigError, match="return a number"):
        greedy_soup([{"w": torch.zeros(1)}], lambda sd: "low")


def test_trainable_state_dict_and_load_trainable_round_trip():
    m = nn.Linear(2, 2)
    m.bias.requires_grad_(False)
    sd = trainable_state_dict(m)
    assert list(sd) == ["weight"] and sd["weight"].data_ptr() != m.weight.data_ptr()
    other = copy.deepcopy(m)
    with torch.no_grad():
        other.weight.zero_()
    load_trainable(other, sd)
    assert torch.equal(other.weight, m.weight)
    with pytest.raises(ConfigError, match="'bias'"):
        load_trainable(other, {**sd, "bias": torch.zeros(2)})
    with pytest.raises(ConfigError, match="shape"):
        load_trainable(other, {"weight": torch.zeros(3)})
