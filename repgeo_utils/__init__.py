"""repgeo: how transformer representations change through fine-tuning and training.

One module per stage of the method (see README, "Architecture"):
``config`` (profiles, paths, seeding), ``data`` (tasks), ``models`` (model registry),
``finetune`` (Trainer-based fine-tuning and evaluation), ``plotting`` (figure style).
"""

__version__ = "0.1.0"
