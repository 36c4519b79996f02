"""nomic-bert checkpoints on our engine (gte.convert.nomic_bert): the numbers of transformers' own NomicBert
classes on every backend, padded and unpadded, past the model's positions; rotary scaling (dynamic NTK) giving each
sequence of a batch what transformers gives it alone; the hub's config spelling (nomic's remote code) read as
transformers' is; sentence-transformers' vectors with nomic's prompts; write_back into the hub's names; a clear
refusal for every variant we cannot run exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from sentence_transformers import SentenceTransformer

import fixtures
import gte
from gte import NewForSequenceClassification, NewModel
from gte.convert import ConversionError
from gte.convert.nomic_bert import ARCHITECTURES, config_from_nomic_bert
from gte.rope import RotaryEmbedding
from model_helpers import assert_writes_back_unchanged, collected_warnings, random_batch

ATOL = 1e-5
BACKENDS = gte.available_backends("cpu", torch.float32)
OURS = {"NomicBertModel": NewModel, "NomicBertForSequenceClassification": NewForSequenceClassification}
LENGTHS = [9, 4, 100, 1, 13]  # 100: past the checkpoints' 64 positions, where RoPE goes on as it starts
TEXTS = ["the quick brown fox jumps over the lazy dog", "paris", "", "deep neural network " * 30]
pytestmark = pytest.mark.filterwarnings("ignore::gte.embed.TruncationWarning")


@pytest.fixture(scope="module")
def nomic(tmp_path_factory):
    """nomic(architecture="NomicBertModel", remote=False, **config) -> a tiny checkpoint saved by transformers' own
    class (fixtures.build_nomic_bert_model), built on first use."""
    built = {}

    def get(architecture: str = "NomicBertModel", remote: bool = False, **overrides):
        key = (architecture, remote, json.dumps(overrides, sort_keys=True))
        if key not in built:
            out = tmp_path_factory.mktemp(f"{architecture}-{'remote' if remote else 'native'}")
            built[key] = fixtures.build_nomic_bert_model(out, architecture, remote=remote, **overrides)
        return built[key]

    return get


def outputs(model, batch, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch, **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state[batch["attention_mask"].bool()]


def assert_same(ours, theirs, lengths=LENGTHS, **kwargs) -> None:
    batch = random_batch(theirs.config, lengths)
    torch.testing.assert_close(outputs(ours, batch, **kwargs), outputs(theirs, batch), rtol=0, atol=ATOL)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("architecture", list(OURS))
def test_same_numbers_as_transformers(nomic, architecture, backend, unpad):
    path = nomic(architecture)
    theirs = getattr(transformers, architecture).from_pretrained(path).eval()
    with collected_warnings() as found:
        ours = OURS[architecture].from_pretrained(path, attn_implementation=backend).eval()
    assert not found
    assert not ours.config.attention_bias and not ours.config.mlp_bias
    assert_same(ours, theirs, unpad_inputs=unpad)


def test_the_hub_spelling_reads_as_transformers_spelling(nomic):
    """A config.json in the hub's spelling (n_embd, rotary_emb_base, qkv_proj_bias, ...) gives the config and the
    numbers of the same checkpoint in transformers' spelling."""
    native, remote = NewModel.from_pretrained(nomic()).eval(), NewModel.from_pretrained(nomic(remote=True)).eval()
    shape = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
             "type_vocab_size", "layer_norm_eps", "rope_theta", "rope_scaling", "attention_bias", "mlp_bias", "gated_mlp")
    assert {k: getattr(remote.config, k) for k in shape} == {k: getattr(native.config, k) for k in shape}
    assert remote.config.max_position_embeddings == 8192  # n_positions: the rotary table's first length, no limit
    batch = random_batch(native.config, LENGTHS)
    torch.testing.assert_close(outputs(remote, batch), outputs(native, batch), rtol=0, atol=0)


@pytest.mark.parametrize("theta", [10000.0, 500.0])
def test_rope_theta_as_the_checkpoint_declares_it(nomic, theta):
    """transformers' rope_parameters and the hub's rotary_emb_base both set the frequencies' base."""
    path = nomic(rope_parameters={"rope_type": "default", "rope_theta": theta})
    ours = NewModel.from_pretrained(path).eval()
    assert ours.config.rope_theta == theta
    assert_same(ours, transformers.NomicBertModel.from_pretrained(path).eval())
    assert config_from_nomic_bert(configs(path)["hub"]).rope_theta == theta


def test_gelu_glu(nomic):
    path = nomic(hidden_act="gelu")
    assert_same(NewModel.from_pretrained(path).eval(), transformers.NomicBertModel.from_pretrained(path).eval())


def test_base_model_from_heads(nomic):
    """The encoder of a masked-LM or classifier checkpoint: their head weights are left behind."""
    for architecture in ("NomicBertForMaskedLM", "NomicBertForSequenceClassification"):
        path = nomic(architecture)
        reference = transformers.NomicBertModel.from_pretrained(path).eval()
        assert_same(NewModel.from_pretrained(path).eval(), reference)


def test_transformers_keeps_its_own_nomic_bert_classes(nomic):
    assert type(transformers.AutoModel.from_pretrained(nomic())) is transformers.NomicBertModel


# ------------------------------------------------------------------------------ rotary scaling: dynamic NTK
TRAINED = 16  # the checkpoint's trained length: longer sequences get a RoPE base of their own
DYNAMIC = {"max_position_embeddings": TRAINED, "rope_parameters": {"rope_type": "dynamic", "rope_theta": 1000.0,
                                                                   "factor": 2.0}}  # fmt: skip
NTK_LENGTHS = [8, 20, 40, 20, 16, 17, 1]  # short, scaled, at and just past the trained length


def alone_in_transformers(path, batch: dict, row: int, length: int) -> torch.Tensor:
    """[length, H]: the row's tokens run alone (positions 0..length-1) in a fresh transformers NomicBertModel, whose
    dynamic NTK keeps frequencies from earlier calls."""
    theirs = transformers.NomicBertModel.from_pretrained(path).eval()
    with torch.no_grad():
        return theirs(**{k: v[row : row + 1, :length] for k, v in batch.items()}).last_hidden_state[0]


@pytest.mark.parametrize("unpad", [True, False], ids=["unpad", "padded"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_ntk_gives_each_sequence_its_own_length(nomic, backend, unpad):
    """Every sequence of a batch of several lengths, packed or padded, equals that sequence run alone in
    transformers."""
    path = nomic(**DYNAMIC)
    ours = NewModel.from_pretrained(path, attn_implementation=backend).eval()
    assert ours.config.rope_scaling == {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": TRAINED}
    batch = random_batch(ours.config, NTK_LENGTHS)
    with torch.no_grad():
        hidden = ours(**batch, unpad_inputs=unpad).last_hidden_state
    for row, length in enumerate(NTK_LENGTHS):
        expected = alone_in_transformers(path, batch, row, length)
        torch.testing.assert_close(hidden[row, :length], expected, rtol=0, atol=ATOL, msg=f"length {length}")


def test_dynamic_ntk_leaves_sequences_up_to_the_trained_length_alone(nomic, monkeypatch):
    """Sequences of at most the trained length get the unscaled model's numbers, bit for bit, in a batch with a
    longer one; a batch of only such sequences reads the plain table and computes nothing per token."""
    overrides = (DYNAMIC, {"max_position_embeddings": TRAINED})  # the same weights, unscaled
    dynamic, plain = (NewModel.from_pretrained(nomic(**o)).eval() for o in overrides)
    batch = random_batch(plain.config, [8, TRAINED, 40])
    scaled, unscaled = outputs(dynamic, batch).split([8, TRAINED, 40]), outputs(plain, batch).split([8, TRAINED, 40])
    for got, expected in zip(scaled[:2], unscaled[:2]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (scaled[2] - unscaled[2]).abs().max() > 0.1  # the long one is scaled
    monkeypatch.setattr(RotaryEmbedding, "_rescale", lambda *args: pytest.fail("per-token work for short sequences"))
    short = random_batch(plain.config, [8, TRAINED, 3])
    torch.testing.assert_close(outputs(dynamic, short), outputs(plain, short), rtol=0, atol=0)


def test_rotary_scaling_given_to_from_pretrained(nomic):
    """nomic's own way to switch it on, `from_pretrained(..., rotary_scaling_factor=2)`, overrides config.json;
    from_pretrained's own keywords (dtype) stay its own."""
    plain = nomic(remote=True, max_position_embeddings=TRAINED)
    given = NewModel.from_pretrained(plain, rotary_scaling_factor=2.0).eval()
    assert NewModel.from_pretrained(nomic(), dtype=torch.bfloat16).dtype == torch.bfloat16  # config.json has "dtype"
    stored = NewModel.from_pretrained(nomic(remote=True, **DYNAMIC)).eval()
    assert given.config.rope_scaling == stored.config.rope_scaling
    batch = random_batch(stored.config, NTK_LENGTHS)
    torch.testing.assert_close(outputs(given, batch), outputs(stored, batch), rtol=0, atol=0)


def test_dynamic_ntk_in_every_spelling(nomic):
    """The hub's rotary_scaling_factor past max_trained_positions, transformers' rope_parameters and its legacy
    rope_scaling: the same config and numbers."""
    native, remote = (NewModel.from_pretrained(nomic(remote=r, **DYNAMIC)).eval() for r in (False, True))
    assert remote.config.rope_scaling == native.config.rope_scaling
    batch = random_batch(native.config, NTK_LENGTHS)
    torch.testing.assert_close(outputs(remote, batch), outputs(native, batch), rtol=0, atol=0)
    spellings = configs(nomic(**DYNAMIC))
    legacy = {k: v for k, v in spellings["native"].items() if k != "rope_parameters"}
    legacy["rope_scaling"] = {"type": "dynamic", "factor": 2.0}
    legacy["rope_theta"] = 1000.0
    assert config_from_nomic_bert(legacy).rope_scaling == native.config.rope_scaling
    assert config_from_nomic_bert(spellings["hub"] | {"rotary_scaling_factor": 0}).rope_scaling is None  # falsy: off
    assert config_from_nomic_bert(spellings["hub"] | {"max_trained_positions": 2048}).rope_scaling == {
        "type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 2048}  # fmt: skip


# ------------------------------------------------------------------------------ Embedder, sentence-transformers
def test_embedder_equals_sentence_transformers_with_nomic_prompts(nomic, tmp_path):
    path = fixtures.build_sentence_transformer(tmp_path, nomic(), pooling="mean", normalize=True,
                                               prompts=fixtures.NOMIC_PROMPTS)  # fmt: skip
    reference = SentenceTransformer(str(path), device="cpu")
    assert type(reference[0].auto_model) is transformers.NomicBertModel  # their class, not ours
    embedder = gte.Embedder(path)
    assert embedder.pooling == "mean" and embedder.prompts == fixtures.NOMIC_PROMPTS
    pairs = {
        "query": (embedder.encode_query(TEXTS), reference.encode_query(TEXTS)),
        "document": (embedder.encode_document(TEXTS), reference.encode_document(TEXTS)),
        "clustering": (embedder.encode(TEXTS, prompt_name="clustering"), reference.encode(TEXTS, prompt_name="clustering")),
        "none": (embedder.encode(TEXTS), reference.encode(TEXTS)),
    }
    for name, (got, expected) in pairs.items():
        np.testing.assert_allclose(got, expected, atol=ATOL, err_msg=name)
    assert not np.allclose(pairs["query"][0], pairs["none"][0])  # the prompts did change the vectors


def test_info_describes_a_nomic_checkpoint(nomic, tmp_path, capsys):
    from gte_cli import main

    path = fixtures.build_sentence_transformer(tmp_path, nomic(), pooling="mean", prompts=fixtures.NOMIC_PROMPTS)
    (path / "config.json").write_text((nomic(remote=True) / "config.json").read_text())  # the hub's spelling
    assert main(["info", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "nomic_bert (converted as it loads)" and report["architecture"] == "NewModel"
    assert (report["gated_mlp"], report["attention_bias"], report["mlp_bias"], report["hidden_act"]) == (True, False, False, "silu")
    assert (report["rope_theta"], report["prompts"], report["pooling"]) == (1000.0, fixtures.NOMIC_PROMPTS, "mean")


# ------------------------------------------------------------------------------ write_back
@pytest.mark.parametrize("architecture", list(OURS))
def test_write_back_of_an_unchanged_model_gives_the_stored_tensors(nomic, architecture):
    """Our parameters written back into the hub's names (fc11 / fc12 unstacked) are the stored tensors, exactly."""
    path = nomic(architecture)
    assert_writes_back_unchanged(path, OURS[architecture].from_pretrained(path))


# ------------------------------------------------------------------------------ what we refuse
def configs(path) -> dict[str, dict]:
    """The checkpoint's config.json in transformers' spelling ("native") and in the hub's ("hub")."""
    native = json.loads((path / "config.json").read_text())
    return {"native": native, "hub": fixtures.remote_nomic_config(transformers.NomicBertConfig.from_pretrained(path))}


REFUSED = {  # name: (spelling, overrides, what the error names)
    "pre-norm": ("hub", {"prenorm": True}, "prenorm=True \\(pre-norm"),
    "parallel": ("hub", {"parallel_block": True}, "parallel_block=True"),
    "causal": ("hub", {"causal": True}, "causal=True"),
    "partial rotary": ("hub", {"rotary_emb_fraction": 0.5}, "rotary_emb_fraction=0.5"),
    "interleaved": ("hub", {"rotary_emb_interleaved": True}, "rotary_emb_interleaved=True"),
    "xpos": ("hub", {"rotary_emb_scale_base": 512}, "rotary_emb_scale_base=512"),
    "scaling below 1": ("hub", {"rotary_scaling_factor": 0.5}, "rotary_scaling_factor=0.5 \\(dynamic NTK"),
    "fc1 bias": ("hub", {"mlp_fc1_bias": True}, "mlp_fc1_bias=True"),
    "rms norm": ("hub", {"use_rms_norm": True}, "use_rms_norm=True"),
    "plain mlp": ("hub", {"activation_function": "gelu"}, "activation_function='gelu'"),
    "moe": ("hub", {"moe_every_n_layers": 2, "num_experts": 8}, "mixture-of-experts"),
    "remote classifier": ("hub", {"architectures": ["NomicBertForSequenceClassification"]}, "a head of nomic's remote code"),
    "architecture": ("hub", {"architectures": ["NomicBertForTokenClassification"]}, "NomicBertForTokenClassification"),
    "linear rope": ("native", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0}},
                    "rotary scaling other than dynamic NTK"),
    "trained length": ("native", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1000.0, "factor": 2.0,
                                                      "original_max_position_embeddings": 32}},
                       "original_max_position_embeddings=32, which transformers"),
    "head_dim": ("native", {"head_dim": 16}, "head_dim=16"),
    "activation": ("native", {"hidden_act": "swiglu"}, "hidden_act='swiglu'"),
}  # fmt: skip


@pytest.mark.parametrize("name", REFUSED)
def test_variants_we_cannot_run_are_refused_by_name(nomic, name, tmp_path):
    spelling, overrides, needle = REFUSED[name]
    config = configs(nomic())[spelling] | overrides
    with pytest.raises(ConversionError, match=needle) as error:
        config_from_nomic_bert(config)
    assert "transformers" in str(error.value)  # says what to use instead
    for file in nomic().iterdir():  # the checkpoint with this config.json: refused as it loads
        (tmp_path / file.name).write_bytes(file.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(config))
    for load in (NewModel.from_pretrained, gte.Embedder):
        with pytest.raises(ConversionError, match=needle):
            load(tmp_path)


def test_every_declared_architecture_converts(nomic):
    spellings = configs(nomic())
    for name, arch in ARCHITECTURES.items():
        assert config_from_nomic_bert(spellings["native"] | {"architectures": [name]}).architectures == [arch.new_class]
        if arch.new_class == "NewModel":  # nomic's remote code: its encoder classes
            assert config_from_nomic_bert(spellings["hub"] | {"architectures": [name]}).architectures == ["NewModel"]
