"""repgeo: how transformer representations change through fine-tuning and training.

One module or subpackage per step of the method (see README, "Architecture"): ``config``
(profiles, paths, seeding), ``cache``, ``data`` (tasks and raw sources), ``models`` (registry,
loader, model identity), ``finetune``, ``activations``, ``similarity``, ``spectral``, ``sae``
(sparse autoencoders and the notebook 03-04 grid), ``lm`` (a small causal LM, its checkpoints
and sweeps), ``toy``, ``posttrain`` (SFT, DPO, GRPO), ``ablation`` (eigen-direction ablation),
``explorer``, ``plotting`` and ``report``.
"""

__version__ = "0.1.0"
