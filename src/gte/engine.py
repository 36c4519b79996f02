"""The encoder as plain torch modules, and the one packed computation every model class runs.

`Encoder` holds NewModel's modules and computation (the packed `run`, and the padded `forward` that transformers
users call) and `EncoderWithHead` the modules of NewForSequenceClassification and NewForTokenClassification, under
the official parameter names; `load` builds them straight from a checkpoint (any layout `gte.convert` reads).
They are what `Embedder`, `Reranker` and `Classifier` run, and what `gte train` trains. transformers'
PreTrainedModel classes (`gte.modeling`) are built from the same modules and share `PackedEncoder`; they serve
transformers' Auto classes and sentence-transformers. The engine does not go
through them because their import alone costs over a second (transformers.modeling_utils pulls in torch._dynamo and
torch.distributed.tensor), more than a one-text `gte embed` spends on everything else after `import torch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers.modeling_outputs import BaseModelOutputWithPooling

from . import attention, convert, threads
from .activations import activation
from .configuration import NewConfig
from .layers import NewEmbeddings, NewEncoder, NewLayer, by_chunks, make_norm
from .padding import Packing, pad, unpad_index
from .tracing import is_exporting


class NewPooler(nn.Module):
    """Each sequence's first token (`classifier_pooling` "cls") or the mean of its tokens ("mean") -> dense ->
    tanh (or `head_act`) [-> norm, with `pooler_norm`: ModernBERT's head]."""

    def __init__(self, config: NewConfig):
        super().__init__()
        self.mean = config.classifier_pooling == "mean"
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.head_bias)
        self.activation = nn.Tanh() if config.head_act is None else activation(config.head_act)
        self.norm = make_norm(config) if config.pooler_norm else None

    def picks(self, packing: Packing) -> torch.Tensor | None:
        """The packed tokens the pooler reads ([B] first tokens), None when it reads them all."""
        return None if self.mean else packing.first_token_index()

    def forward(self, picked: torch.Tensor, packing: Packing) -> torch.Tensor:
        """picked: the tokens `picks` names ([B, H] first tokens, or all [T, H]) -> [B, H]."""
        return self.transform(packing.sequence_means(picked) if self.mean else picked)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, H]: dense -> activation [-> norm]."""
        x = self.activation(self.dense(x))
        return x if self.norm is None else self.norm(x)


@dataclass
class Batch:
    """A validated padded batch, packed: what `NewModel.run` needs plus the way back to [B, L]."""

    input_ids: torch.Tensor | None  # [T]
    inputs_embeds: torch.Tensor | None  # [T, H]
    token_type_ids: torch.Tensor | None  # [T]
    positions: torch.Tensor  # [T]
    lengths: torch.Tensor  # [B] valid tokens per row
    packing: Packing
    index: torch.Tensor | None  # [T] flat positions in [B * L] when unpadded; None when padded
    shape: tuple[int, int]  # (B, L)

    def to_padded(self, x: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, L, ...] (zeros at padding when unpadded)."""
        if self.index is None:
            return x.view(*self.shape, *x.shape[1:])
        return pad(x, self.index, *self.shape)

    def first_tokens(self) -> torch.Tensor:  # [B] packed index of each row's first valid token
        if self.index is None:  # padded: each row's start in the [B * L] stream, past any left padding
            starts = torch.arange(self.shape[0], device=self.lengths.device) * self.shape[1]
            return starts + self.packing.key_mask.int().argmax(1)
        return self.packing.first_token_index()

    def subset(self, selection: torch.Tensor) -> torch.Tensor:
        """A [B, L] bool mask or flat [B * L] indices -> packed indices of those tokens."""
        flat = selection.reshape(-1).nonzero().squeeze(1) if selection.dtype == torch.bool else selection.reshape(-1)
        if self.index is None:
            return flat
        inverse = torch.full((self.shape[0] * self.shape[1],), -1, dtype=torch.long, device=flat.device)
        inverse[self.index] = torch.arange(self.index.shape[0], device=flat.device)
        picked = inverse[flat]
        if (picked < 0).any():
            raise ValueError("subset_indices selects padding positions; select only positions where attention_mask is 1")
        return picked


class PackedEncoder:
    """embeddings -> layers [-> final norm] [, pooler]: NewModel's and `Encoder`'s modules and computation (a mixin
    for an nn.Module with a `config`): `run` on packed tokens, and the padded `forward` that transformers users
    call, which validates the batch, removes padding (unless unpad_inputs is off) and runs `run`."""

    config: NewConfig

    def build(self, config: NewConfig, add_pooling_layer: bool) -> None:
        self.embeddings = NewEmbeddings(config)
        self.encoder = NewEncoder(config)
        self.pooler = NewPooler(config) if add_pooling_layer else None

    def run(
        self,
        input_ids: torch.Tensor | None,  # [T]
        packing: Packing,
        *,
        positions: torch.Tensor | None = None,  # [T]; default: 0.. within each sequence
        token_type_ids: torch.Tensor | None = None,  # [T]
        inputs_embeds: torch.Tensor | None = None,  # [T, H]
        lengths: torch.Tensor | None = None,  # [B] valid tokens (for the logn scale); default packing.seqlens
        subset: torch.Tensor | None = None,  # [S] tokens whose last-layer output is wanted
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Packed tokens in, hidden [T, H] (or [S, H]) out, plus every layer's output and attention probs."""
        positions = packing.positions if positions is None else positions
        x, rope, local_rope = self.embeddings(input_ids, inputs_embeds, token_type_ids, positions, packing)
        windowed = self.config.layer_types is not None and "sliding_attention" in self.config.layer_types
        backend = attention.select(
            self.config._attn_implementation, x.device, x.dtype, packing.key_mask is not None, output_attentions, windowed
        )
        logn = self._logn_scale(packing.seqlens if lengths is None else lengths, packing, x.dtype)
        hidden_states, attentions = [x], []
        last = len(self.encoder.layer) - 1
        with threads.sized_to(x.shape[0] * self.config.hidden_size * self.config.intermediate_size, x.device):
            for i, layer in enumerate(self.encoder.layer):
                x, probs = layer(
                    x,
                    packing,
                    backend,
                    rope if layer.window is None else local_rope,
                    logn,
                    subset=subset if i == last else None,
                    output_attentions=output_attentions,
                )
                hidden_states.append(x)
                attentions.append(probs)
        if hasattr(self.encoder, "final_norm"):  # pre-norm layers: the last hidden state is the final norm's output
            x = hidden_states[-1] = by_chunks(self.encoder.final_norm, x)
        return x, hidden_states if output_hidden_states else [], attentions if output_attentions else []

    def _logn_scale(self, lengths: torch.Tensor, packing: Packing, dtype: torch.dtype) -> torch.Tensor | None:
        """[T] query scale log(n) / log(max_position_embeddings), n = the row's valid tokens."""
        if not self.config.logn_attention_scale:
            return None
        scale = lengths.float().log() / math.log(self.config.max_position_embeddings)
        if self.config.logn_attention_clip1:
            scale = scale.clamp(min=1)
        return packing.per_token(scale.to(dtype))

    # ------------------------------------------------------------------ the padded interface
    def prepare(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        length: torch.Tensor | list[int] | None,
        unpad: bool,
    ) -> Batch:
        """Validate a padded [B, L] batch and pack it (dropping padding when `unpad`)."""
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        source = input_ids if input_ids is not None else inputs_embeds
        expected_dims = 2 if input_ids is not None else 3
        if source.dim() != expected_dims:
            name = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(f"{name} must have {expected_dims} dimensions (batch, seq{', hidden' * (expected_dims == 3)}), got shape {tuple(source.shape)}")
        batch, seqlen = source.shape[:2]
        if batch == 0 or seqlen == 0:
            raise ValueError(f"empty batch (shape {tuple(source.shape)}): pass at least one sequence of at least one token")
        device = source.device
        if attention_mask is None:
            if length is not None:
                length = torch.as_tensor(length, device=device)
                attention_mask = torch.arange(seqlen, device=device) < length[:, None]
            else:
                attention_mask = torch.ones(batch, seqlen, dtype=torch.bool, device=device)
        if tuple(attention_mask.shape) != (batch, seqlen):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs have (batch, seq) = {(batch, seqlen)}; "
                "pass one mask value per token"
            )
        mask = attention_mask.bool()
        lengths = mask.sum(1)
        _check_rows(lengths)
        if input_ids is not None:
            _check_range("input_ids", input_ids, config.vocab_size, "vocab_size")
        if token_type_ids is not None:
            if tuple(token_type_ids.shape) != (batch, seqlen):
                raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)}, expected {(batch, seqlen)}")
            if config.type_vocab_size > 0:
                _check_range("token_type_ids", token_type_ids, config.type_vocab_size, "type_vocab_size")
            else:
                token_type_ids = None
        if position_ids is None:
            position_ids = (mask.cumsum(1) - 1).clamp(min=0)  # 0.. over each row's valid tokens
        else:
            position_ids = position_ids.expand(batch, seqlen)
        if config.position_embedding_type == "absolute":
            _check_range("position ids", position_ids, config.max_position_embeddings, "max_position_embeddings")

        if unpad:
            index = unpad_index(mask)
            packing = Packing.from_seqlens(lengths)
        else:
            index, packing = None, Packing.padded(mask)

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            flat = t.reshape(batch * seqlen, *t.shape[2:])
            return flat if index is None else flat[index]

        return Batch(take(input_ids), take(inputs_embeds), take(token_type_ids), take(position_ids), lengths, packing, index, (batch, seqlen))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        length: torch.Tensor | list[int] | None = None,
        subset_indices: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        unpad_inputs: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """Padded batch [B, L] in; last_hidden_state [B, L, H] out (zeros at padding when unpadded).

        `subset_indices` ([B, L] bool or flat [B * L] indices) keeps only those tokens' final outputs:
        last_hidden_state is then [S, H] and there is no pooler output.
        """
        unpad = self.config.unpad_inputs if unpad_inputs is None else unpad_inputs
        output_attentions = output_attentions or False
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        batch = self.prepare(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, length, unpad)
        subset = None if subset_indices is None else batch.subset(subset_indices)
        hidden, states, probs = self.run(
            batch.input_ids,
            batch.packing,
            positions=batch.positions,
            token_type_ids=batch.token_type_ids,
            inputs_embeds=batch.inputs_embeds,
            lengths=batch.lengths,
            subset=subset,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        pooled = None
        if self.pooler is not None and subset is None:
            pooled = self.pooler(hidden if self.pooler.mean else hidden[batch.first_tokens()], batch.packing)
        if subset is None:
            hidden = batch.to_padded(hidden)
        states = [batch.to_padded(s) if s.shape[0] == batch.positions.shape[0] else s for s in states]
        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=tuple(states) if output_hidden_states else None,
            attentions=tuple(probs) if output_attentions else None,
        )
        return output if return_dict_of(self.config, return_dict) else output.to_tuple()


# The value checks read the data, which a graph being exported (torch.export, ONNX) cannot: they are skipped there.
def _check_rows(lengths: torch.Tensor) -> None:
    if is_exporting():
        return
    empty = (lengths == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} of attention_mask have no valid token; every sequence needs at least one")


def _check_range(name: str, values: torch.Tensor, limit: int, key: str) -> None:
    if is_exporting():
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= limit:
        raise ValueError(f"{name} must lie in [0, {limit}) ({key} = {limit}), got values from {low} to {high}")


def return_dict_of(config: NewConfig, return_dict: bool | None) -> bool:
    return config.return_dict if return_dict is None else return_dict


class EngineModule(nn.Module):
    """What the engine's modules share with transformers' models: a config, a device and a dtype."""

    base_model_prefix = "new"  # a head's encoder, as the official checkpoints name it

    def __init__(self, config: NewConfig):
        super().__init__()
        self.config = config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype


class Encoder(PackedEncoder, EngineModule):
    """NewModel's modules and computation (the packed `run`, the padded `forward`), without transformers'
    PreTrainedModel."""

    architecture = "NewModel"

    def __init__(self, config: NewConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        self.build(config, add_pooling_layer)


class EncoderWithHead(EngineModule):
    """A classifier on the encoder: NewForSequenceClassification's modules (the pooled first token -> dropout ->
    classifier) or NewForTokenClassification's (each token [-> the pooler's transform, `token_head`] -> dropout ->
    classifier)."""

    def __init__(self, config: NewConfig, architecture: str):
        super().__init__(config)
        self.architecture = architecture
        sequence = architecture == "NewForSequenceClassification"
        self.new = Encoder(config, add_pooling_layer=sequence)
        if not sequence and config.token_head:
            self.head = NewPooler(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)


ARCHITECTURES = ("NewModel", "NewForSequenceClassification", "NewForTokenClassification")  # what `load` builds


def load(
    path: str | Path, architecture: str, *, dtype: torch.dtype, attn_implementation: str | None = None
) -> Encoder | EncoderWithHead:
    """The checkpoint at `path` (a directory; any layout `gte.convert` reads) as `architecture` (one of
    ARCHITECTURES), on the CPU in `dtype`, in eval mode. The base model of any head checkpoint loads as NewModel;
    weights the built modules do not hold (a pooler, another head) are left out; weights they need and the
    checkpoint lacks raise MissingWeights naming them."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"the engine builds {', '.join(ARCHITECTURES)}, not {architecture!r}: load other heads with "
                         "transformers' Auto classes (gte.modeling)")  # fmt: skip
    config, weights = convert.read(str(path))
    config.name_or_path = str(path)
    config._attn_implementation = attention.requested(attn_implementation, config.use_memory_efficient_attention)
    with _NoInit():
        model = Encoder(config) if architecture == "NewModel" else EncoderWithHead(config, architecture)
    state = _named_for(model, weights, dtype)
    missing = sorted(name for name in model.state_dict() if name not in state)
    if missing:
        raise MissingWeights(missing)
    model.load_state_dict(state, strict=False, assign=True)
    return model.eval()


class _NoInit(TorchFunctionMode):
    """Modules built inside allocate their parameters (uninitialised memory) but skip torch.nn.init's random values,
    which the checkpoint's replace at once: 12 ms instead of 2 s for gte-large's shape. (Building on the meta device
    would also skip the allocation, but its init kernels import torch._dynamo: 1.4 s.)"""

    INIT = tuple(getattr(nn.init, name) for name in ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
                                                   "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_"))  # fmt: skip

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.INIT:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


class MissingWeights(ValueError):
    """The checkpoint lacks weights the model needs (they would be random numbers)."""

    def __init__(self, names: list[str]):
        super().__init__(names)
        self.names = names


def _named_for(model: nn.Module, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the names `model` holds (a head checkpoint's base model `new.` loads as a
    bare Encoder), floating ones in `dtype`; the rest left out."""
    wanted = model.state_dict().keys()
    prefix = f"{model.base_model_prefix}." if isinstance(model, Encoder) else ""
    state = {}
    for name, tensor in weights.items():
        name = name.removeprefix(prefix)
        if name in wanted:
            state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return state


def checkpointing(model: nn.Module) -> None:
    """Gradient checkpointing on for every layer of `model` (an engine module or a transformers model)."""
    for module in model.modules():
        if isinstance(module, NewLayer):
            module.gradient_checkpointing = True
