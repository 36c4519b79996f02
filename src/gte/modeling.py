"""`NewModel` and its heads: transformers PreTrainedModels with the official parameter names.

NewModel's modules and computation are gte.engine's `PackedEncoder` (the packed `run` on hidden [T, H], and the
padded `forward(input_ids, attention_mask, ...)` that validates the batch, removes padding unless unpad_inputs is
off, and runs `run`), which the engine's `Encoder` shares without transformers' model classes; the heads here add
their outputs and losses.
"""

from __future__ import annotations

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
from transformers.modeling_outputs import (
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from . import attention
from .activations import activation
from .configuration import NewConfig
from .engine import NewPooler, PackedEncoder, return_dict_of
from .layers import layer_norm
from .padding import pad, unpad_index


class NewPreTrainedModel(PreTrainedModel):
    config_class = NewConfig
    config: NewConfig
    base_model_prefix = "new"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["NewLayer"]
    # A pooler in the checkpoint (BERT's, say) that the loaded class does not build is not worth a warning.
    _keys_to_ignore_on_load_unexpected = [r"pooler\."]

    @property
    def architecture(self) -> str:
        return type(self).__name__

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, allow_all_kernels: bool = False
    ) -> str:
        """Our backends, not transformers': the choice is checked here and resolved per call."""
        return attention.requested(attn_implementation, self.config.use_memory_efficient_attention)

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


class NewModel(PackedEncoder, NewPreTrainedModel):
    def __init__(self, config: NewConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        self.build(config, add_pooling_layer)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value


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
        self.transform_act_fn = activation(config.head_act or config.hidden_act)
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
        return output if return_dict_of(self.config, return_dict) else output.to_tuple()


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
        return output if return_dict_of(self.config, return_dict) else output.to_tuple()


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
        return output if return_dict_of(self.config, return_dict) else output.to_tuple()


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
        return output if return_dict_of(self.config, return_dict) else output.to_tuple()


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
        return output if return_dict_of(self.config, return_dict) else output.to_tuple()


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

