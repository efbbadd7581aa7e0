"""Recipe keys whose values are words: read in any case (`train.amp=BF16` is bf16), and some take
YAML's true and false words as their own (`train.cuda_graphs: yes` is on)."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from sftkd_cli.acquisition import TASKS
from sftkd_cli.choices import AMP_MODES, BATCHED_SETTINGS, CHECKPOINT_NAMES, CUDA_GRAPHS_MODES, LAYOUT_SETTINGS, RUN_ROLES, SCHEDULES
from sftkd_cli.name_checks import DEVICE_NAMES, in_any_case

#: text keys whose values are words, with the words they take for YAML's true and false words
#: (yes, on, true / no, off, false, as written or read by YAML from a plan); train.amp has no
#: true word: `train.amp=on` stays "on", which validate refuses as typed
WORD_KEYS: dict[str, tuple[str | None, str]] = {
    "train.amp": (None, "off"), "train.cuda_graphs": ("on", "off"),
    "train.channels_last": ("true", "false"), "sft.batched": ("true", "false"),
}
#: keys whose words are read in any case, with their words (`in_any_case`: others stay as typed)
ANY_CASE_KEYS: dict[str, Container[str]] = {
    "train.amp": AMP_MODES, "train.cuda_graphs": CUDA_GRAPHS_MODES, "train.channels_last": LAYOUT_SETTINGS,
    "sft.batched": BATCHED_SETTINGS, "train.device": DEVICE_NAMES, "distill.schedule": SCHEDULES,
    "data.task": TASKS, "run.role": RUN_ROLES, "eval.checkpoint": CHECKPOINT_NAMES,
}
_YAML_TRUE = {spelling for word in ("yes", "on", "true") for spelling in (word, word.capitalize(), word.upper())}
_YAML_FALSE = {spelling for word in ("no", "off", "false") for spelling in (word, word.capitalize(), word.upper())}


def read_words(recipe: Any) -> None:
    """Write the word keys of `recipe` (a `config.Recipe`) as their words: `ANY_CASE_KEYS` in
    lower case, and YAML's true and false words as those of `WORD_KEYS`."""
    for dotted, words in ANY_CASE_KEYS.items():
        section, key = dotted.split(".")
        setattr(getattr(recipe, section), key, in_any_case(getattr(getattr(recipe, section), key), words))
    for dotted, (true_word, false_word) in WORD_KEYS.items():
        section, key = dotted.split(".")
        value = getattr(getattr(recipe, section), key)
        word = true_word if value in _YAML_TRUE else false_word if value in _YAML_FALSE else None
        setattr(getattr(recipe, section), key, word or value)
