"""Text in, student out: the datasets handed to ``CounterfactualDistillationTrainer`` made trainable.

As TRL's trainers do with ``dataset_text_field``, the trainer takes a ``datasets.Dataset`` of raw text
or of chat conversations and prepares it itself, per its :class:`~distill.config.DistillationConfig`:

* already tokenized (an ``input_ids`` column): used as it is, untouched;
* text in ``config.text_column`` (default ``"text"``): counterfactual data augmentation per
  ``config.cda`` (training split only), then tokenized and packed into blocks of ``config.block_size``
  tokens, and cut to ``max_train_samples`` / ``max_eval_samples`` blocks;
* chat ``messages`` (lists of ``{"role": ..., "content": ...}``) and no text column: each conversation
  is rendered with the tokenizer's chat template first, then treated as text.

These are the steps of the launcher's :func:`distill.data.prepare_lm_datasets` after loading, made of
the same functions (:func:`~distill.data.augment_training_documents`,
:func:`~distill.data.tokenize_and_pack`), so a recipe and a Python call train on the same blocks.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase

from counterfactuals import load_lexicon

from .config import DistillationConfig
from .data import augment_training_documents, tokenize_and_pack

__all__ = ["MESSAGES_COLUMN", "prepare_dataset", "render_chats"]

MESSAGES_COLUMN = "messages"


def prepare_dataset(
    dataset: Any, tokenizer: PreTrainedTokenizerBase | None, config: DistillationConfig, *, train: bool
) -> Any:
    """``dataset`` as packed ``input_ids``/``attention_mask``/``labels`` blocks (see the module
    docstring). ``train`` selects CDA and ``max_train_samples``; an evaluation split is never
    augmented. A dict of evaluation datasets is prepared entry by entry. Anything that is not a
    ``datasets`` dataset (a torch ``Dataset``, a list) or is already tokenized is returned as it is."""
    if isinstance(dataset, dict):
        return {name: prepare_dataset(part, tokenizer, config, train=train) for name, part in dataset.items()}
    if not isinstance(dataset, (Dataset, IterableDataset)):
        return dataset
    columns = dataset.column_names
    if columns is None or "input_ids" in columns:  # None: a stream of unknown columns, taken as it is
        return dataset
    which = "train_dataset" if train else "eval_dataset"
    text_column = config.text_column
    if text_column not in columns and MESSAGES_COLUMN not in columns:
        raise ValueError(
            f"{which} has no {text_column!r} column (raw text), no {MESSAGES_COLUMN!r} column (chat) and no "
            f"'input_ids' column (tokenized); its columns are {columns}. Set text_column in the "
            "DistillationConfig to the column holding the text"
        )
    if tokenizer is None:
        raise ValueError(f"{which} holds text: pass the tokenizer (processing_class=...) to tokenize it")
    with config.main_process_first(desc=f"fairdistill: preparing {which}"):
        if text_column not in columns:
            dataset = render_chats(dataset, tokenizer, text_column=text_column, which=which)
        if train and config.cda is not None:
            dataset, _ = augment_training_documents(
                dataset,
                config.cda,
                text_column=text_column,
                names=config.swap_names,
                lexicon=None if config.lexicon is None else load_lexicon(config.lexicon),
                num_proc=config.preprocessing_num_workers,
                seed=config.seed,
            )
        try:
            blocks = tokenize_and_pack(
                dataset,
                tokenizer,
                block_size=config.block_size,
                text_column=text_column,
                num_proc=config.preprocessing_num_workers,
            )
        except ValueError as err:
            raise ValueError(f"{which}: {err}") from err
    limit = config.max_train_samples if train else config.max_eval_samples
    if limit is not None:
        if isinstance(blocks, IterableDataset):
            return blocks.take(limit)
        if limit < len(blocks):
            blocks = blocks.select(range(limit))
    return blocks


class _RenderChat:
    """Batched ``map`` function: each conversation as the text its chat template renders. A class, not a
    closure, so that it pickles for ``num_proc`` workers and hashes the same for the ``datasets`` cache."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, text_column: str) -> None:
        self.tokenizer = tokenizer
        self.text_column = text_column

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[str]]:
        render = self.tokenizer.apply_chat_template
        return {self.text_column: [render(chat, tokenize=False) for chat in batch[MESSAGES_COLUMN]]}


def render_chats(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    text_column: str = "text",
    which: str = "the dataset",
) -> Dataset | IterableDataset:
    """Replace the ``messages`` column by ``text_column``: every conversation rendered with the
    tokenizer's chat template (no generation prompt: the conversation is training text as it is)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{which} holds chat {MESSAGES_COLUMN!r} but the tokenizer has no chat template: set "
            f"tokenizer.chat_template (a Jinja template), or pass the conversations as text in a "
            f"{text_column!r} column"
        )
    kwargs: dict[str, Any] = {"batched": True, "remove_columns": [MESSAGES_COLUMN]}
    if isinstance(dataset, Dataset):  # lazy datasets take no progress-bar description
        kwargs["desc"] = "Rendering chats with the chat template"
    return dataset.map(_RenderChat(tokenizer, text_column), **kwargs)
