"""Post-training a causal LM in three stages (SFT, DPO, verifiable-reward RL) and measuring
what each stage does to its representations and its answers.

Paper 2 (Li et al. 2025, section 3.4 and Fig. 6) follows RankMe and alpha-ReQ through the
Tulu-3 recipe on Llama-3.1-8B: supervised fine-tuning and DPO expand the representation
("entropy-seeking"), RL from verifiable rewards (RLVR) compresses it ("compression-seeking"),
and RLVR raises pass@k at small k while the base model catches up or overtakes it at large k.
This subpackage runs the same three stages, with TRL's ``SFTTrainer``, ``DPOTrainer`` and
``GRPOTrainer``, on a model this machine can train: by default the small GPT-NeoX pretrained
from scratch by :mod:`repgeo_utils.lm` (any causal LM in the hub's format works, e.g.
``EleutherAI/pythia-160m`` in the paper profile).

The stage data come from the offline classification tasks, so every answer can be checked:

- a **prompt task** (:data:`PROMPT_TASKS`) turns a labelled text into ``prompt`` ->
  ``answer``, e.g. ``"Headline: Ad sales boost Time Warner profit\\nTopic:"`` -> ``business``;
- **SFT** trains on prompt + ``" " + answer`` (loss on the answer and the end-of-text token);
- **DPO** pairs the correct answer (chosen) with a seeded wrong one (rejected), reference =
  the SFT model;
- **RL** is GRPO with the exact-match reward :func:`exact_match_reward` (1 for the right
  label word, 0 otherwise);
- **in-distribution (ID)** = held-out test rows of the training task, **out-of-distribution
  (OOD)** = test rows of another task (e.g. tweet sentiment) that no stage trains on.

Each stage is a cache entry ``data/cache/posttrain/<stage>-<hash>/`` whose key chains the
base model's weights, the data and every setting of this and the earlier stages; it holds the
final weights and ``revisions/step<N>/`` on Pythia's checkpoint schedule (step 0 = the
stage's starting point), so :func:`repgeo_utils.lm.sweep_checkpoints` measures it like a
pretraining run. A stage is written to a temporary folder and renamed only when complete:
an interrupted run keeps the finished stages and redoes only the interrupted one.

A synthetic task with a large answer space (:data:`SYNTHETIC_TASKS`: ``"12+7="`` -> ``19``)
is the standard run's ID task, so that pass@k at large k is not saturated by guessing.

Modules: :mod:`~repgeo_utils.posttrain.tasks` (prompt tasks, data, reward),
:mod:`~repgeo_utils.posttrain.stages` (settings, the per-stage trainer builders of
:data:`TRAINER_BUILDERS`, :func:`posttrain`), :mod:`~repgeo_utils.posttrain.measures` (pass@k,
generation, answer NLL, :func:`measure_posttraining`, :func:`stage_summary`),
:mod:`~repgeo_utils.posttrain.seeds` (the stages over seeds, GRPO without and with a KL
penalty, tidy tables with spreads, the random-guess pass@k), and
:mod:`~repgeo_utils.posttrain.checkpoint_sft` (the same SFT from successive pretraining
checkpoints, ID and OOD loss; paper 2's Fig 6B).
"""

from .checkpoint_sft import (
    CheckpointSFTSettings,
    TopicPair,
    bbc_topic_pair,
    first_sentence,
    sft_from_checkpoints,
)
from .measures import (
    DEAD_BAND,
    PosttrainMeasurements,
    answer_nll,
    change_direction,
    evaluate_model,
    generate_answers,
    measure_posttraining,
    pass_at_k,
    pass_at_k_curve,
    sample_correct_counts,
    solved_counts,
    stage_summary,
)
from .seeds import (
    SEED_MEASURES,
    SeedRuns,
    posttrain_over_seeds,
    random_pass_at_k,
    rl_variants,
    run_seed,
    summarise_changes,
)
from .stages import (
    FORMAT_VERSION,
    POSTTRAIN_SETTINGS,
    STAGE_TITLES,
    STAGES,
    TRAINER_BUILDERS,
    DPOSettings,
    PosttrainConfig,
    PosttrainResult,
    RLSettings,
    SFTSettings,
    StageRun,
    build_dpo,
    build_rl,
    build_sft,
    posttrain,
)
from .tasks import (
    PROMPT_TASKS,
    SYNTHETIC_TASKS,
    AdditionTask,
    PromptData,
    PromptTask,
    addition_prompt_data,
    build_prompt_data,
    dpo_pairs,
    exact_match_reward,
    normalise_answer,
)

__all__ = [
    "SEED_MEASURES",
    "SYNTHETIC_TASKS",
    "AdditionTask",
    "CheckpointSFTSettings",
    "SeedRuns",
    "TopicPair",
    "addition_prompt_data",
    "bbc_topic_pair",
    "first_sentence",
    "posttrain_over_seeds",
    "random_pass_at_k",
    "rl_variants",
    "run_seed",
    "sft_from_checkpoints",
    "summarise_changes",
    "DEAD_BAND",
    "FORMAT_VERSION",
    "POSTTRAIN_SETTINGS",
    "PROMPT_TASKS",
    "STAGES",
    "STAGE_TITLES",
    "TRAINER_BUILDERS",
    "DPOSettings",
    "PosttrainConfig",
    "PosttrainMeasurements",
    "PosttrainResult",
    "PromptData",
    "PromptTask",
    "RLSettings",
    "SFTSettings",
    "StageRun",
    "answer_nll",
    "build_dpo",
    "build_prompt_data",
    "build_rl",
    "build_sft",
    "change_direction",
    "dpo_pairs",
    "evaluate_model",
    "exact_match_reward",
    "generate_answers",
    "measure_posttraining",
    "normalise_answer",
    "pass_at_k",
    "pass_at_k_curve",
    "posttrain",
    "sample_correct_counts",
    "solved_counts",
    "stage_summary",
]
