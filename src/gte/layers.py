"""The encoder's building blocks. Every module works on packed tokens: hidden [T, H]."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .activations import activation
from .attention import Backend
from .attention.eager import attention_with_probs
from .configuration import NewConfig
from .padding import Packing
from .rope import RotaryEmbedding, apply_rotary
from .tracing import is_exporting

Rope = tuple[torch.Tensor, torch.Tensor]  # cos, sin: [T, 1, 1, head_dim]

# Rows per step of the per-token work on CPU: the MLP's [rows, 2 * intermediate] activations stay small enough
# to be reused from the allocator's cache (no fresh pages from the OS) and to stay in the last-level cache.
CPU_CHUNK_TOKENS = 1024


def by_chunks(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """fn(*tensors) on [N, ...] tensors, row chunk by row chunk on CPU (one call on other devices, and in exported
    graphs, whose row count is symbolic)."""
    rows = tensors[0].shape[0]
    if tensors[0].device.type != "cpu" or is_exporting() or rows <= CPU_CHUNK_TOKENS:
        return fn(*tensors)
    return torch.cat([fn(*parts) for parts in zip(*(t.split(CPU_CHUNK_TOKENS) for t in tensors))])


def make_norm(config: NewConfig) -> nn.Module:
    if config.layer_norm_type == "rms_norm":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return layer_norm(config)


def layer_norm(config: NewConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.norm_bias)


class NewEmbeddings(nn.Module):
    """word (+ token type) (+ absolute position) -> LayerNorm -> dropout; owns the rotary tables (a second one for
    local attention layers with their own base, `local_rope_theta`)."""

    def __init__(self, config: NewConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embedding_type = config.position_embedding_type
        if config.position_embedding_type == "absolute":
            self.position_embeddings = nn.Embedding(
                config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
            )
        else:
            self.rotary_emb = RotaryEmbedding(config)
            if config.local_rope_theta is not None:
                self.local_rotary_emb = RotaryEmbedding(config, config.local_rope_theta)
        if config.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = layer_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None,  # [T]
        inputs_embeds: torch.Tensor | None,  # [T, H]
        token_type_ids: torch.Tensor | None,  # [T]
        positions: torch.Tensor,  # [T]
        packing: Packing,  # the sequences the tokens form: dynamic NTK scaling reads their lengths
    ) -> tuple[torch.Tensor, Rope | None, Rope | None]:
        """hidden [T, H], the rotary cos/sin of global layers and of local attention layers (None: absolute)."""
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if hasattr(self, "token_type_embeddings"):
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(positions)
            x = x + self.token_type_embeddings(token_type_ids)
        rope = local_rope = None
        if self.position_embedding_type == "absolute":
            x = x + self.position_embeddings(positions)
        elif positions.numel():
            rope = local_rope = self.rotary_emb(positions, x.dtype, packing)
            if hasattr(self, "local_rotary_emb"):
                local_rope = self.local_rotary_emb(positions, x.dtype, packing)
        return self.dropout(self.LayerNorm(x)), rope, local_rope


class NewAttention(nn.Module):
    def __init__(self, config: NewConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        hidden, bias = config.hidden_size, config.attention_bias
        if config.pack_qkv:
            self.qkv_proj = nn.Linear(hidden, 3 * hidden, bias=bias)
        else:
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(hidden, hidden, bias=bias) for _ in range(3))
        self.o_proj = nn.Linear(hidden, hidden, bias=bias)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """[T, H] -> [T, 3 (q, k, v), heads, head_dim]."""
        if hasattr(self, "qkv_proj"):
            return self.qkv_proj(x).view(-1, 3, self.num_heads, self.head_dim)
        return torch.stack([p(x) for p in (self.q_proj, self.k_proj, self.v_proj)], 1).view(-1, 3, self.num_heads, self.head_dim)

    def forward(
        self,
        x: torch.Tensor,  # [T, H]
        packing: Packing,
        backend: Backend,
        rope: Rope | None,
        logn_scale: torch.Tensor | None,  # [T]
        output_attentions: bool = False,
        subset: torch.Tensor | None = None,  # [S]: project only these tokens' outputs
        window: int | None = None,  # keys at most this many positions from the query; None: all
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[T, H] -> [T, H] (or [S, H]), plus the attention probabilities when asked."""
        qkv = self.qkv(x)
        qk, v = qkv[:, :2], qkv[:, 2]
        if rope is not None:
            qk = apply_rotary(qk, *rope)  # q and k in one pass
        q, k = qk.unbind(1)
        if logn_scale is not None:
            q = q * logn_scale[:, None, None]
        if output_attentions:
            out, probs = attention_with_probs(q, k, v, packing, window)
        else:
            out, probs = backend.attend(q, k, v, packing, window), None
        out = out.reshape(x.shape)
        return self.o_proj(out if subset is None else out[subset]), probs


class NewGatedMLP(nn.Module):
    """up_gate_proj -> act(gate) * up -> down_proj; the first intermediate_size rows are "up"."""

    def __init__(self, config: NewConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.up_gate_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = activation(config.hidden_act)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate = self.up_gate_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(self.dropout(self.act_fn(gate) * up))


class NewMLP(nn.Module):
    """BERT's feed-forward, for checkpoints converted from BERT-family models (`gated_mlp=False`):
    up_proj -> act -> down_proj."""

    def __init__(self, config: NewConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(x)))


class NewLayer(nn.Module):
    """Post-norm: h = attn_ln(h + attn(h)); h = mlp_ln(h + mlp(h)).
    Pre-norm (`norm_position: "pre"`): h = h + attn(attn_ln(h)); h = h + mlp(mlp_ln(h)).
    Layer 0 has no attention norm with `first_attn_norm: false`; attention is local in the layers that
    `layer_types` marks "sliding_attention".

    Gradient checkpointing (training): with `gradient_checkpointing` set, a layer's activations are recomputed in
    the backward pass instead of kept. transformers' `gradient_checkpointing_enable()` sets it, and its own
    checkpoint function as `_gradient_checkpointing_func`, on every module that has the attribute;
    `gte.engine.checkpointing` sets it on the engine's layers."""

    gradient_checkpointing = False
    _gradient_checkpointing_func: Callable[..., tuple] = partial(checkpoint, use_reentrant=False)

    def __init__(self, config: NewConfig, index: int):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.window = config.layer_window(index)
        self.attention = NewAttention(config)
        self.attn_ln = make_norm(config) if index or config.first_attn_norm else nn.Identity()
        self.mlp = NewGatedMLP(config) if config.gated_mlp else NewMLP(config)
        self.mlp_ln = make_norm(config)
        self.hidden_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,  # [T, H]
        packing: Packing,
        backend: Backend,
        rope: Rope | None,
        logn_scale: torch.Tensor | None,
        subset: torch.Tensor | None = None,  # [S]: keep only these tokens' outputs
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query = by_chunks(self.attn_ln, x) if self.pre_norm else x
        attn, probs = self.attention(query, packing, backend, rope, logn_scale, output_attentions, subset, self.window)
        if subset is not None:
            x = x[subset]
        return by_chunks(self.feed_forward, x, attn), probs

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(partial(super().__call__, **kwargs), x, *args)
        return super().__call__(x, *args, **kwargs)

    def feed_forward(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The per-token rest of the layer: [N, H] residual and attention output -> [N, H]."""
        if self.pre_norm:
            x = x + self.hidden_dropout(attn)
            return x + self.hidden_dropout(self.mlp(self.mlp_ln(x)))
        x = self.attn_ln(x + self.hidden_dropout(attn))
        return self.mlp_ln(x + self.hidden_dropout(self.mlp(x)))


class NewEncoder(nn.Module):
    """The layers; with pre-norm layers, the final norm after the last one."""

    def __init__(self, config: NewConfig):
        super().__init__()
        self.layer = nn.ModuleList(NewLayer(config, i) for i in range(config.num_hidden_layers))
        if config.norm_position == "pre":
            self.final_norm = make_norm(config)
