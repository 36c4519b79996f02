"""`NewConfig`: the configuration of the GTE "new" encoder (HF `model_type: "new"`).

Accepts every key that official `config.json` files carry, with the original implementation's
defaults, and validates the values that shape the model. Keys of our own describe checkpoints converted from
other families (`gte.convert`); their defaults are the official model's: `gated_mlp` (true: the official GLU;
false: BERT's feed-forward), `attention_bias` (the q/k/v and output projections' biases) and `mlp_bias` (the
feed-forward's biases outside the GLU's up/gate projection, which never has one); nomic-bert has neither.
ModernBERT's are keys too: `norm_position` ("post"; "pre": each sublayer's input normed, a final norm after the
last layer), `first_attn_norm` (false: layer 0 without its attention norm, the embeddings' norm standing in),
`norm_bias` (LayerNorms with biases), `layer_types` with `sliding_window` (layers of local attention: a query sees
the keys at most `sliding_window` positions away) and `local_rope_theta` (their RoPE base), and the heads':
`classifier_pooling` ("cls" or "mean" before the pooler), `head_act` / `head_bias` (the pooler's and the masked-LM
head's dense transform), `pooler_norm` (a norm after the pooler's activation), `decoder_bias`, `token_head` (the token
classifier's tokens through the pooler's transform first). Every default is
the official model's.

Importing this module registers model_type "new" with transformers' AutoConfig; the first NewConfig built
imports `gte.modeling`, which registers the model classes with AutoModel & co. An Auto class looks a model up
by its config, so the classes are there when one is needed, and `import gte` does not import them (their
import pulls in transformers' PreTrainedModel, torch._dynamo and torch.distributed: over a second). gte's
own reading of checkpoints (`convert.new_config`: the engine's loading, what Embedder, Reranker and Classifier
run, and `gte info`; the tokenizer's loading) builds its configs inside `engine_only()` and never imports them;
to hand such a config to an Auto class, `import gte.modeling` first.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from . import activations

LAYER_NORM_TYPES = ("layer_norm", "rms_norm")
POSITION_EMBEDDING_TYPES = ("rope", "absolute")
ROPE_SCALING_TYPES = ("ntk", "dynamic")
DYNAMIC_KEYS = ("type", "factor", "original_max_position_embeddings")
NORM_POSITIONS = ("post", "pre")
LAYER_TYPES = ("full_attention", "sliding_attention")
CLASSIFIER_POOLINGS = ("cls", "mean")

_REGISTER_MODELS: ContextVar[bool] = ContextVar("register_models", default=True)


@contextmanager
def engine_only() -> Iterator[None]:
    """NewConfigs built inside do not import `gte.modeling`: gte's own reading of checkpoints (`convert.new_config`,
    which the engine's loading uses, and `hub.load_tokenizer`) needs no transformers model class."""
    token = _REGISTER_MODELS.set(False)
    try:
        yield
    finally:
        _REGISTER_MODELS.reset(token)


class NewConfig(PretrainedConfig):
    model_type = "new"
    # A plain attribute here: transformers 5 turns `rope_scaling` into an alias of its own
    # `rope_parameters`, which does not know GTE's fixed NTK scaling.
    rope_scaling: dict[str, Any] | None = None

    def __init__(
        self,
        vocab_size: int = 30528,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.0,
        max_position_embeddings: int = 2048,
        type_vocab_size: int = 1,
        initializer_range: float = 0.02,
        layer_norm_type: str = "layer_norm",
        layer_norm_eps: float = 1e-12,
        position_embedding_type: str = "rope",
        rope_theta: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
        classifier_dropout: float | None = None,
        pack_qkv: bool = True,
        unpad_inputs: bool = False,
        use_memory_efficient_attention: bool = False,
        logn_attention_scale: bool = False,
        logn_attention_clip1: bool = False,
        gated_mlp: bool = True,
        attention_bias: bool = True,
        mlp_bias: bool = True,
        norm_position: str = "post",
        first_attn_norm: bool = True,
        norm_bias: bool = True,
        layer_types: list[str] | None = None,
        sliding_window: int | None = None,
        local_rope_theta: float | None = None,
        classifier_pooling: str = "cls",
        head_act: str | None = None,
        head_bias: bool = True,
        pooler_norm: bool = False,
        decoder_bias: bool = True,
        token_head: bool = False,
        **kwargs: Any,
    ):
        kwargs.setdefault("pad_token_id", 0)
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_type = layer_norm_type
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.classifier_dropout = classifier_dropout
        self.pack_qkv = pack_qkv
        self.unpad_inputs = unpad_inputs
        self.use_memory_efficient_attention = use_memory_efficient_attention
        self.logn_attention_scale = logn_attention_scale
        self.logn_attention_clip1 = logn_attention_clip1
        self.gated_mlp = gated_mlp
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.norm_position = norm_position
        self.first_attn_norm = first_attn_norm
        self.norm_bias = norm_bias
        self.layer_types = layer_types
        self.sliding_window = sliding_window
        self.local_rope_theta = local_rope_theta
        self.classifier_pooling = classifier_pooling
        self.head_act = head_act
        self.head_bias = head_bias
        self.pooler_norm = pooler_norm
        self.decoder_bias = decoder_bias
        self.token_head = token_head
        self.validate_new()
        if _REGISTER_MODELS.get():
            importlib.import_module(".modeling", __package__)  # registers the model classes (once per process)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def layer_window(self, i: int) -> int | None:
        """Layer i's attention window (a query sees keys at most this many positions away), None: every key."""
        local = self.layer_types is not None and self.layer_types[i] == "sliding_attention"
        return self.sliding_window if local else None

    def validate_new(self) -> None:
        """Raise a ValueError naming the key for values the architecture cannot take."""
        if self.num_attention_heads <= 0 or self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); fix one of the two keys in config.json"
            )
        if not activations.known(self.hidden_act):
            raise ValueError(f"unknown hidden_act {self.hidden_act!r}: expected one of {', '.join(activations.names())}")
        for key in ("gated_mlp", "attention_bias", "mlp_bias", "first_attn_norm", "norm_bias", "head_bias",
                    "pooler_norm", "decoder_bias", "token_head"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        _check_choice("layer_norm_type", self.layer_norm_type, LAYER_NORM_TYPES)
        _check_choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        _check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        _check_choice("classifier_pooling", self.classifier_pooling, CLASSIFIER_POOLINGS)
        if self.head_act is not None and not activations.known(self.head_act):
            raise ValueError(f"unknown head_act {self.head_act!r}: expected null or one of {', '.join(activations.names())}")
        self._validate_local_attention()
        self._validate_rope_scaling()
        if self.attention_probs_dropout_prob:
            raise ValueError(
                f"attention_probs_dropout_prob must be 0.0 (memory-efficient attention kernels take no dropout), "
                f"got {self.attention_probs_dropout_prob}"
            )

    def _validate_rope_scaling(self) -> None:
        """Fixed NTK {"type": "ntk", "factor": F[, "mixed_b": B]} or dynamic NTK {"type": "dynamic", "factor": F[,
        "original_max_position_embeddings": N]} (gte.rope: each sequence scaled for its own length past N)."""
        scaling = self.rope_scaling
        if scaling is None:
            return
        if not isinstance(scaling, dict):
            raise ValueError(f"rope_scaling must be a dict like {{'type': 'ntk', 'factor': 2.0}} or null, got {scaling!r}")
        _check_choice("rope_scaling['type']", scaling.get("type"), ROPE_SCALING_TYPES)
        factor = scaling.get("factor")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
            raise ValueError(f"rope_scaling['factor'] must be a number >= 1, got {factor!r}")
        if scaling["type"] != "dynamic":
            return
        unknown = sorted(set(scaling) - set(DYNAMIC_KEYS))
        if unknown:  # mixed_b, say: a key dynamic NTK would silently ignore
            raise ValueError(f"rope_scaling of type 'dynamic' takes only {', '.join(DYNAMIC_KEYS)}; got {unknown}")
        trained = scaling.get("original_max_position_embeddings", self.max_position_embeddings)
        if isinstance(trained, bool) or not isinstance(trained, int) or trained < 1:
            raise ValueError(f"rope_scaling['original_max_position_embeddings'] (the trained length past which dynamic "
                             f"NTK scales a sequence) must be a whole number >= 1, got {trained!r}")  # fmt: skip

    def _validate_local_attention(self) -> None:
        if self.layer_types is None:
            return
        if not isinstance(self.layer_types, list) or len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types must list one type per layer ({self.num_hidden_layers}), got {self.layer_types!r}")
        for kind in self.layer_types:
            _check_choice("layer_types entry", kind, LAYER_TYPES)
        local = "sliding_attention" in self.layer_types
        if local and (isinstance(self.sliding_window, bool) or not isinstance(self.sliding_window, int) or self.sliding_window < 0):
            raise ValueError(f"sliding_window must be a whole number >= 0 for layer_types with 'sliding_attention', "
                             f"got {self.sliding_window!r}")  # fmt: skip
        if self.position_embedding_type != "rope" and self.local_rope_theta is not None:
            raise ValueError("local_rope_theta needs position_embedding_type 'rope'; set it to null")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {key} {value!r}: expected one of {', '.join(map(repr, choices))}")


AutoConfig.register("new", NewConfig, exist_ok=True)
