"""Training: gradients padded vs unpadded, gradient checkpointing, every head's loss, a few optimizer steps."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn import functional as F

from gte import (
    NewForMaskedLM,
    NewForMultipleChoice,
    NewForQuestionAnswering,
    NewForSequenceClassification,
    NewForTokenClassification,
    NewModel,
)
from model_helpers import random_batch, small_config

LENGTHS = [9, 6, 2]
# Every switch that changes the computation: NTK RoPE, logn scale, split q/k/v, RMSNorm.
CONFIG = dict(rope_scaling={"type": "ntk", "factor": 2.0}, logn_attention_scale=True, pack_qkv=False, layer_norm_type="rms_norm")


def tiny_model(cls, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return cls(small_config(**(CONFIG | overrides))).train()  # dropout is 0: train mode is deterministic


def mlm_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Labels on every other valid token, -100 elsewhere."""
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[:, 1::2] = -100
    return labels


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    """Equal up to float32 rounding, measured against each gradient's largest value (they reach tens here, and
    the padded and unpadded paths run different attention kernels)."""
    assert a.keys() == b.keys()
    for name in a:
        scale = max(1.0, float(b[name].abs().max()))
        torch.testing.assert_close(a[name] / scale, b[name] / scale, rtol=0, atol=atol, msg=name)


# ------------------------------------------------------------------------------------ backward
def test_base_model_gradients_agree_padded_and_unpadded():
    model = tiny_model(NewModel)
    batch = random_batch(model.config, LENGTHS)
    weights = torch.randn(*batch["input_ids"].shape, 32, generator=torch.Generator().manual_seed(1))
    weights *= batch["attention_mask"][..., None]  # a loss over valid positions only

    def loss(unpad: bool) -> torch.Tensor:
        return (model(**batch, unpad_inputs=unpad).last_hidden_state * weights).sum()

    unpadded, padded = gradients(model, loss(True)), gradients(model, loss(False))
    assert len(unpadded) == len(list(model.parameters()))
    assert_same_gradients(unpadded, padded)


def test_masked_lm_gradients_agree_padded_and_unpadded():
    model = tiny_model(NewForMaskedLM)
    batch = random_batch(model.config, LENGTHS)
    labels = mlm_labels(batch)
    unpadded = model(**batch, labels=labels, unpad_inputs=True)
    padded = model(**batch, labels=labels, unpad_inputs=False)
    torch.testing.assert_close(unpadded.loss, padded.loss, rtol=0, atol=1e-6)
    assert_same_gradients(gradients(model, unpadded.loss), gradients(model, padded.loss))


def test_masked_lm_with_unpadding_computes_logits_for_labelled_tokens_only():
    model = tiny_model(NewForMaskedLM).eval()
    batch = random_batch(model.config, LENGTHS)
    labels = mlm_labels(batch)
    with torch.no_grad():
        subset = model(**batch, labels=labels, unpad_inputs=True)
        full = model(**batch, unpad_inputs=False)
    selected = labels != -100
    assert subset.logits.shape == (int(selected.sum()), model.config.vocab_size)
    torch.testing.assert_close(subset.logits, full.logits[selected], rtol=0, atol=1e-5)
    torch.testing.assert_close(subset.loss, F.cross_entropy(full.logits[selected], labels[selected]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant):
    model = tiny_model(NewForMaskedLM)
    batch = random_batch(model.config, LENGTHS)
    labels = mlm_labels(batch)
    expected = gradients(model, model(**batch, labels=labels, unpad_inputs=True).loss)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames it activation_checkpointing_enable
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    calls = []
    model.new.encoder.layer[0].attention.register_forward_hook(lambda *_: calls.append(1))
    got = gradients(model, model(**batch, labels=labels, unpad_inputs=True).loss)
    assert len(calls) == 2  # the layer ran again in the backward pass
    assert_same_gradients(got, expected, atol=1e-6)


# ------------------------------------------------------------------------------------ every head's loss
@pytest.mark.parametrize(
    "num_labels, labels, expected_problem",
    [
        (1, torch.tensor([0.5, -1.0, 2.0]), "regression"),
        (3, torch.tensor([2, 0, 1]), "single_label_classification"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "multi_label_classification"),
    ],
    ids=["regression", "single_label", "multi_label"],
)
@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
def test_sequence_classification_losses(num_labels, labels, expected_problem, unpad):
    model = tiny_model(NewForSequenceClassification, num_labels=num_labels)
    out = model(**random_batch(model.config, LENGTHS), labels=labels, unpad_inputs=unpad)
    assert model.config.problem_type == expected_problem
    expected = {
        "regression": lambda: F.mse_loss(out.logits.squeeze(-1), labels),
        "single_label_classification": lambda: F.cross_entropy(out.logits, labels),
        "multi_label_classification": lambda: F.binary_cross_entropy_with_logits(out.logits, labels),
    }[expected_problem]()
    torch.testing.assert_close(out.loss, expected)
    assert all(g.isfinite().all() for g in gradients(model, out.loss).values())


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
def test_token_classification_loss(unpad):
    model = tiny_model(NewForTokenClassification, num_labels=4)
    batch = random_batch(model.config, LENGTHS)
    labels = (batch["input_ids"] % 4).masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels, unpad_inputs=unpad)
    valid = labels != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[valid], labels[valid]))
    assert all(g.isfinite().all() for g in gradients(model, out.loss).values())


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
def test_multiple_choice_loss(unpad):
    model = tiny_model(NewForMultipleChoice)
    batch = {k: v.view(2, 2, -1) for k, v in random_batch(model.config, [9, 6, 2, 5]).items()}
    labels = torch.tensor([1, 0])
    out = model(**batch, labels=labels, unpad_inputs=unpad)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert all(g.isfinite().all() for g in gradients(model, out.loss).values())


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
def test_question_answering_loss(unpad):
    model = tiny_model(NewForQuestionAnswering)
    starts, ends = torch.tensor([1, 0, 1]), torch.tensor([4, 5, 1])
    out = model(**random_batch(model.config, LENGTHS), start_positions=starts, end_positions=ends, unpad_inputs=unpad)
    expected = (F.cross_entropy(out.start_logits, starts) + F.cross_entropy(out.end_logits, ends)) / 2
    torch.testing.assert_close(out.loss, expected)
    assert all(g.isfinite().all() for g in gradients(model, out.loss).values())


# ------------------------------------------------------------------------------------ learning
def test_a_few_adamw_steps_make_the_masked_lm_loss_fall():
    """Rows count upward (mod 90); every third token is masked and must be read off its neighbours."""
    torch.manual_seed(0)
    model = NewForMaskedLM(small_config(hidden_dropout_prob=0.0)).train()
    starts = torch.arange(0, 96, 12)[:, None]
    original = (starts + torch.arange(12)) % 90 + 5  # [8, 12], ids 5..94
    mask = torch.ones_like(original)
    mask[1::2, 9:] = 0  # half the rows are shorter
    masked = torch.zeros_like(original, dtype=torch.bool)
    masked[:, 1::3] = True
    masked &= mask.bool()
    inputs = original.masked_fill(masked, 4) * mask
    labels = original.masked_fill(~masked, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model(input_ids=inputs, attention_mask=mask, labels=labels, unpad_inputs=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
