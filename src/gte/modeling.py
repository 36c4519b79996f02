"""`NewModel` and its heads: transformers PreTrainedModels with the official parameter names.

The padded `forward(input_ids, attention_mask, ...)` that transformers users call validates the
batch, removes padding (unless unpad_inputs is off) and runs the one packed computation,
`NewModel.run`, on hidden [T, H].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import logging

from . import attention, threads
from .configuration import NewConfig
from .layers import NewEmbeddings, NewEncoder, by_chunks, layer_norm, make_norm
from .padding import Packing, pad, unpad_index
from .tracing import is_exporting

logger = logging.get_logger(__name__)


class NewPreTrainedModel(PreTrainedModel):
    config_class = NewConfig
    config: NewConfig
    base_model_prefix = "new"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["NewLayer"]
    # A pooler in the checkpoint (BERT's, say) that the loaded class does not build is not worth a warning.
    _keys_to_ignore_on_load_unexpected = [r"pooler\."]

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, allow_all_kernels: bool = False
    ) -> str:
        """Our backends, not transformers': the choice is checked here and resolved per call."""
        if attn_implementation in (None, attention.AUTO) and self.config.use_memory_efficient_attention:
            if attention.xformers.kernel() is not None:
                return "xformers"
            logger.warning_once(
                "use_memory_efficient_attention=True but xformers is not installed: using the best memory-efficient "
                "attention available instead (`pip install 'gte-engine[xformers]'` to get xformers)."
            )
        return attention.canonical_name(attn_implementation)

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Also loads checkpoints in other layouts, converted as they load (see `gte.convert`): transformers'
        native `gte`, BERT and XLM-RoBERTa."""
        from . import convert

        converted = convert.load(pretrained_model_name_or_path, kwargs) if pretrained_model_name_or_path else None
        if converted is None:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        kwargs["config"], kwargs["state_dict"] = converted
        loaded = super().from_pretrained(None, *args, **kwargs)  # transformers takes a state dict only without a path
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading info) with output_loading_info
        model.config.name_or_path = model.name_or_path = str(pretrained_model_name_or_path)
        return loaded


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


class NewPooler(nn.Module):
    """Each sequence's first token (`classifier_pooling` "cls") or the mean of its tokens ("mean") -> dense ->
    tanh (or `head_act`) [-> norm, with `pooler_norm`: ModernBERT's head]."""

    def __init__(self, config: NewConfig):
        super().__init__()
        self.mean = config.classifier_pooling == "mean"
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.head_bias)
        self.activation = nn.Tanh() if config.head_act is None else ACT2FN[config.head_act]
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


class NewModel(NewPreTrainedModel):
    def __init__(self, config: NewConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        self.embeddings = NewEmbeddings(config)
        self.encoder = NewEncoder(config)
        self.pooler = NewPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    # ------------------------------------------------------------------ the packed computation
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
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


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


def _return_dict(config: NewConfig, return_dict: bool | None) -> bool:
    return config.return_dict if return_dict is None else return_dict


def _unpad_flag(model: nn.Module, unpad_inputs: bool | None) -> bool:
    return model.config.unpad_inputs if unpad_inputs is None else unpad_inputs


def _per_token(head: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None, unpadded: bool) -> torch.Tensor:
    """Apply a token head to [B, L, H]; when unpadded, only on the valid tokens (zeros elsewhere)."""
    if not unpadded or attention_mask is None:
        return head(hidden)
    index = unpad_index(attention_mask.bool())
    flat = hidden.reshape(-1, hidden.shape[-1])[index]
    return pad(head(flat), index, *hidden.shape[:2])


# ---------------------------------------------------------------------------------------- heads
class NewLMPredictionHead(nn.Module):
    """dense -> hidden_act (or `head_act`) -> LayerNorm -> decoder."""

    def __init__(self, config: NewConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.head_bias)
        self.transform_act_fn = ACT2FN[config.head_act or config.hidden_act]
        self.norm = layer_norm(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.transform_act_fn(self.dense(hidden))))


class NewForMaskedLM(NewPreTrainedModel):
    _tied_weights_keys = {"lm_head.decoder.weight": "new.embeddings.word_embeddings.weight"}

    def __init__(self, config: NewConfig):
        super().__init__(config)
        self.new = NewModel(config, add_pooling_layer=False)
        self.lm_head = NewLMPredictionHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head.decoder = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        unpad_inputs=None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        """With labels and unpadding, logits are computed for the labelled tokens only: [N, vocab]."""
        unpad = _unpad_flag(self, unpad_inputs)
        subset = None
        if labels is not None and unpad:
            subset = labels != -100
            if attention_mask is not None:
                subset &= attention_mask.bool()
        outputs = self.new(
            input_ids,
            attention_mask=attention_mask,
            subset_indices=subset,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            unpad_inputs=unpad,
        )
        if subset is not None:
            logits = self.lm_head(outputs.last_hidden_state)
            labels = labels[subset]
        else:
            logits = _per_token(self.lm_head, outputs.last_hidden_state, attention_mask, unpad)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.reshape(-1, self.config.vocab_size), labels.reshape(-1).to(logits.device))
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


def _classifier_dropout(config: NewConfig) -> nn.Dropout:
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p)


def sequence_loss(config: NewConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Regression, single-label or multi-label loss, chosen like transformers' BERT heads."""
    labels = labels.to(logits.device)
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return MSELoss()(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype)) if config.num_labels == 1 else MSELoss()(logits, labels)
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, config.num_labels), labels.view(-1))
    return BCEWithLogitsLoss()(logits, labels.to(logits.dtype))


class NewForSequenceClassification(NewPreTrainedModel):
    def __init__(self, config: NewConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.new = NewModel(config, add_pooling_layer=True)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        unpad_inputs=None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        outputs = self.new(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            unpad_inputs=unpad_inputs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None if labels is None else sequence_loss(self.config, logits, labels)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


class NewForMultipleChoice(NewPreTrainedModel):
    def __init__(self, config: NewConfig):
        super().__init__(config)
        self.new = NewModel(config, add_pooling_layer=True)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        unpad_inputs=None,
        **kwargs,
    ) -> MultipleChoiceModelOutput | tuple:
        """Inputs are [B, choices, L] (inputs_embeds [B, choices, L, H]); choices run as B * choices rows."""
        source = input_ids if input_ids is not None else inputs_embeds
        if source is None or source.dim() < 3:
            raise ValueError("NewForMultipleChoice takes inputs shaped (batch, num_choices, seq)")
        num_choices = source.shape[1]

        def flat(t: torch.Tensor | None, dims: int = 2) -> torch.Tensor | None:
            return None if t is None else t.reshape(-1, *t.shape[-(dims - 1):])

        outputs = self.new(
            flat(input_ids),
            attention_mask=flat(attention_mask),
            token_type_ids=flat(token_type_ids),
            position_ids=flat(position_ids),
            inputs_embeds=flat(inputs_embeds, 3),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            unpad_inputs=unpad_inputs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = None if labels is None else CrossEntropyLoss()(logits, labels.to(logits.device))
        output = MultipleChoiceModelOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


class NewForTokenClassification(NewPreTrainedModel):
    def __init__(self, config: NewConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.new = NewModel(config, add_pooling_layer=False)
        self.head = NewPooler(config) if config.token_head else None  # its transform, per token (ModernBERT)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        unpad_inputs=None,
        **kwargs,
    ) -> TokenClassifierOutput | tuple:
        unpad = _unpad_flag(self, unpad_inputs)
        outputs = self.new(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            unpad_inputs=unpad,
        )
        head = lambda h: self.classifier(self.dropout(h if self.head is None else self.head.transform(h)))  # noqa: E731
        logits = _per_token(head, outputs.last_hidden_state, attention_mask, unpad)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


class NewForQuestionAnswering(NewPreTrainedModel):
    def __init__(self, config: NewConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.new = NewModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        unpad_inputs=None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput | tuple:
        unpad = _unpad_flag(self, unpad_inputs)
        outputs = self.new(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            unpad_inputs=unpad,
        )
        logits = _per_token(self.qa_outputs, outputs.last_hidden_state, attention_mask, unpad)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)
            loss_fct = CrossEntropyLoss(ignore_index=ignored)
            start = start_positions.view(-1).clamp(0, ignored).to(start_logits.device)
            end = end_positions.view(-1).clamp(0, ignored).to(end_logits.device)
            loss = (loss_fct(start_logits, start) + loss_fct(end_logits, end)) / 2
        output = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


# model_type "new" for transformers' Auto classes (NewConfig imports this module as it is first built)
for _auto, _cls in (
    (AutoModel, NewModel),
    (AutoModelForMaskedLM, NewForMaskedLM),
    (AutoModelForSequenceClassification, NewForSequenceClassification),
    (AutoModelForTokenClassification, NewForTokenClassification),
    (AutoModelForMultipleChoice, NewForMultipleChoice),
    (AutoModelForQuestionAnswering, NewForQuestionAnswering),
):
    _auto.register(NewConfig, _cls, exist_ok=True)
