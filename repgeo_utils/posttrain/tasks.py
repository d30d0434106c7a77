"""Verifiable prompt tasks: how a labelled text of :mod:`repgeo_utils.data` becomes prompt ->
answer (:data:`PROMPT_TASKS`), the exact-match reward that checks an answer, the prompt data of
the stages (:func:`build_prompt_data`) and DPO's preference pairs (:func:`dpo_pairs`)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..cache import key_hash
from ..data import load_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptTask:
    """How a classification task of :mod:`repgeo_utils.data` becomes prompt -> answer.

    ``template`` has one ``{text}`` field; the answer is the class name (a single word for
    the offline tasks), which the model must write after the prompt.
    """

    task: str
    template: str

    def prompt(self, text: str) -> str:
        return self.template.format(text=" ".join(str(text).split()))


PROMPT_TASKS: dict[str, PromptTask] = {
    "bbc-news": PromptTask("bbc-news", "Headline: {text}\nTopic:"),
    "tweets-3way": PromptTask("tweets-3way", "Tweet: {text}\nSentiment:"),
    "tweets-binary": PromptTask("tweets-binary", "Tweet: {text}\nSentiment:"),
}


@dataclass(frozen=True)
class AdditionTask:
    """A verifiable task with a large answer space: ``"a+b="`` -> the sum, for operands ``a``
    and ``b`` in ``[low, high)``. Unlike the five topic labels (a random guess passes 16
    tries with probability 0.97), a random guess among its ``2 (high - low) - 1`` sums rarely
    does, so pass@k at large k measures something."""

    task: str
    low: int
    high: int
    template: str = "{a}+{b}="

    def prompt(self, a: int, b: int) -> str:
        return self.template.format(a=a, b=b)

    @property
    def answers(self) -> list[str]:
        """Every possible sum, as text, in increasing order."""
        return [str(x) for x in range(2 * self.low, 2 * self.high - 1)]


#: Synthetic prompt tasks (no data package needed). ``addition`` is the ID task of the
#: standard post-training; ``addition-large`` (operands 100-199, sums 200-396) its OOD task:
#: the same answer format on numbers no stage trains on.
SYNTHETIC_TASKS: dict[str, AdditionTask] = {
    "addition": AdditionTask("addition", 0, 100),
    "addition-large": AdditionTask("addition-large", 100, 200),
}

_TRAILING = ".,;:!?\"'"


def normalise_answer(text: str) -> str:
    """The answer a completion gives: its first line, lower-cased, stripped of surrounding
    white space and trailing punctuation (``" Business.\\nmore"`` -> ``"business"``)."""
    first = str(text).strip().split("\n", 1)[0] if str(text).strip() else ""
    return first.strip().rstrip(_TRAILING).strip().lower()


def exact_match_reward(completions: Sequence[Any], answer: Sequence[str], **_: Any) -> list[float]:
    """Verifiable reward: 1.0 when a completion's answer (:func:`normalise_answer`) is exactly
    the reference answer, else 0.0. ``completions`` are strings (or TRL's conversational form,
    a list of messages whose last ``content`` is used). Signature as TRL's GRPO reward
    functions expect: extra dataset columns arrive as keyword arguments."""
    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers.")
    rewards = []
    for completion, ref in zip(completions, answer, strict=True):
        if isinstance(completion, list):  # conversational: [{"role": ..., "content": ...}]
            completion = completion[-1]["content"] if completion else ""
        rewards.append(1.0 if normalise_answer(completion) == normalise_answer(ref) else 0.0)
    return rewards


@dataclass
class PromptData:
    """Prompt / answer rows of one task: ``train`` for the stages, ``test`` held out."""

    task: str
    answers: list[str]  # the label words, in label order
    train: list[dict[str, str]]  # {"prompt", "answer"}
    test: list[dict[str, str]]

    def fingerprint(self) -> str:
        return key_hash({"train": self.train, "test": self.test, "answers": self.answers}, 16)


def _fit_prompt(tokenizer, task: PromptTask, text: str, max_tokens: int) -> str | None:
    """The prompt of ``text``, with words dropped from the end of the text until it fits in
    ``max_tokens`` tokens (None if even one word does not fit)."""
    words = " ".join(str(text).split()).split(" ")
    prompt = task.prompt(" ".join(words))
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    while n > max_tokens and len(words) > 1:
        # drop words in proportion to the excess, then one at a time
        cut = max(1, min(len(words) - 1, (n - max_tokens) // 2))
        words = words[:-cut]
        prompt = task.prompt(" ".join(words))
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return prompt if n <= max_tokens else None


def build_prompt_data(
    task: str,
    tokenizer,
    *,
    max_prompt_tokens: int = 48,
    max_rows: int | None = 2500,
    seed: int = 0,
) -> PromptData:
    """Prompt / answer rows of an offline task (raw text, no preprocessing), split as
    :func:`repgeo_utils.data.load_task` splits it (seeded, stratified): its train split for
    the stages, its test split held out."""
    if task in SYNTHETIC_TASKS:
        return addition_prompt_data(SYNTHETIC_TASKS[task], max_rows=max_rows, seed=seed)
    if task not in PROMPT_TASKS:
        known = ", ".join([*PROMPT_TASKS, *SYNTHETIC_TASKS])
        raise ValueError(f"Unknown prompt task {task!r}; known: {known}.")
    spec = PROMPT_TASKS[task]
    dataset = load_task(task, max_rows=max_rows, preprocess=None, seed=seed)
    answers = list(dataset["train"].features["label"].names)
    splits: dict[str, list[dict[str, str]]] = {}
    for split in ("train", "test"):
        rows = []
        for text, label in zip(dataset[split]["text"], dataset[split]["label"], strict=True):
            prompt = _fit_prompt(tokenizer, spec, text, max_prompt_tokens)
            if prompt is not None:
                rows.append({"prompt": prompt, "answer": answers[label]})
        if not rows:
            raise ValueError(f"Task {task!r} has no usable rows in its {split!r} split.")
        splits[split] = rows
    return PromptData(task, answers, splits["train"], splits["test"])


def addition_prompt_data(
    task: AdditionTask, *, max_rows: int | None = None, seed: int = 0
) -> PromptData:
    """Every ``a + b`` of the task's range, in a seeded order (the first ``max_rows`` of
    them), split 80 / 10 / 10 like the offline tasks: the first 80% train the stages, the
    last 10% are the held-out test rows."""
    pairs = [(a, b) for a in range(task.low, task.high) for b in range(task.low, task.high)]
    random.Random(seed).shuffle(pairs)
    if max_rows is not None:
        pairs = pairs[:max_rows]
    rows = [{"prompt": task.prompt(a, b), "answer": str(a + b)} for a, b in pairs]
    n_train, n_test = int(0.8 * len(rows)), max(1, int(0.1 * len(rows)))
    return PromptData(task.task, task.answers, rows[:n_train], rows[len(rows) - n_test :])


def _rejected(answer: str, answers: list[str], rng: random.Random) -> str:
    """A wrong answer: for numeric answers a near miss (off by 1 to 10), else any other."""
    if answer.lstrip("-").isdigit() and all(a.lstrip("-").isdigit() for a in answers[:3]):
        allowed = set(answers)
        near = [str(int(answer) + d) for d in range(-10, 11) if d]
        near = [a for a in near if a in allowed]
        if near:
            return rng.choice(near)
    return rng.choice([a for a in answers if a != answer])


def dpo_pairs(data: PromptData, seed: int = 0) -> list[dict[str, str]]:
    """Preference pairs: chosen = the right answer, rejected = a wrong answer drawn with a
    seeded RNG, a near miss (off by 1 to 10) for numeric answers (completions carry a leading
    space, as in SFT)."""
    if len(data.answers) < 2:
        raise ValueError("DPO pairs need at least two answers.")
    rng = random.Random(seed)
    return [
        {
            "prompt": row["prompt"],
            "chosen": " " + row["answer"],
            "rejected": " " + _rejected(row["answer"], data.answers, rng),
        }
        for row in data.train
    ]
