"""The course module: exercises a student solves in ``notebooks/exercises/``, and their checks.

Each exercise notebook follows a research notebook (``ex02_similarity`` follows
``02_activation_similarity``, and so on). In it the student writes a function in a stub cell and
runs ``check_<name>(<name>)``, which compares the function with cases solved by hand (those of
the unit tests) and with the package's own function on real activations, and prints one line:
``PASS <name>: ...`` or ``FAIL <name>: <what is wrong>`` (:mod:`.checking`).

The committed notebooks are the teacher copies, solutions between nbgrader's delimiters;
``make student`` writes the student copies with nbgrader's preprocessors (:mod:`.student`).

Check modules, one per notebook: :mod:`.ex02_similarity`, :mod:`.ex03_sae`,
:mod:`.ex05_spectral`, :mod:`.ex07_toy`, :mod:`.ex08_posttrain`. :data:`EXERCISES` lists every
exercise with its difficulty, importance and time, as the notebook headers and the README's
course table state them (a test keeps the three in step).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    """One exercise: the function the student writes, and its ARENA-style header."""

    notebook: str  # file name in notebooks/exercises/
    number: str  # "2.3": notebook 02, third exercise
    name: str  # the function the student writes; its check is check_<name>
    title: str
    difficulty: int  # 1-5
    importance: int  # 1-5
    minutes: int

    def header(self) -> str:
        """The exercise's heading and rating line, as the notebook shows them."""
        return (
            f"### Exercise {self.number} · {self.title}\n\n"
            f"> **Difficulty** {stars(self.difficulty)} · **Importance** "
            f"{stars(self.importance)} · about **{self.minutes} minutes**"
        )


def stars(n: int) -> str:
    """``n`` of 5 stars: ``stars(3) == "★★★☆☆"``."""
    if not 1 <= n <= 5:
        raise ValueError(f"a rating is 1 to 5 stars, got {n}")
    return "★" * n + "☆" * (5 - n)


_E = Exercise
#: Every exercise, in course order.
EXERCISES: tuple[Exercise, ...] = (
    _E("ex02_similarity.ipynb", "2.1", "cosine_of_means", "Cosine of means", 1, 3, 5),
    _E("ex02_similarity.ipynb", "2.2", "mean_token_cosine", "Mean per-token cosine", 1, 4, 10),
    _E("ex02_similarity.ipynb", "2.3", "linear_cka", "Linear CKA", 3, 5, 20),
    _E("ex03_sae.ipynb", "3.1", "sae_forward", "The SAE's forward pass", 2, 5, 15),
    _E("ex03_sae.ipynb", "3.2", "sae_loss", "The SAE's loss: MSE + L1", 2, 4, 10),
    _E("ex03_sae.ipynb", "3.3", "fvu", "Fraction of variance unexplained", 2, 4, 10),
    _E("ex03_sae.ipynb", "3.4", "mean_l0", "Mean L0", 1, 3, 5),
    _E("ex03_sae.ipynb", "3.5", "dead_latents", "Dead latents", 1, 3, 5),
    _E("ex05_spectral.ipynb", "5.1", "covariance_eigenvalues", "The eigenspectrum", 2, 4, 10),
    _E("ex05_spectral.ipynb", "5.2", "rankme", "RankMe, both variants", 2, 5, 15),
    _E("ex05_spectral.ipynb", "5.3", "alpha_req", "alpha-ReQ", 3, 4, 25),
    _E("ex07_toy.ipynb", "7.1", "toy_loss_and_grads", "Loss and gradients", 4, 4, 30),
    _E("ex07_toy.ipynb", "7.2", "toy_step", "One gradient-descent step", 1, 3, 5),
    _E("ex08_posttrain.ipynb", "8.1", "pass_at_k", "Unbiased pass@k", 2, 4, 15),
    _E("ex08_posttrain.ipynb", "8.2", "eigen_ablate", "Eigen-direction ablation", 3, 4, 20),
)


def course_table() -> str:
    """The README's exercise table (markdown), from :data:`EXERCISES`."""
    lines = [
        "| notebook | exercise | difficulty | importance | minutes |",
        "|---|---|---|---|---|",
    ]
    for e in EXERCISES:
        lines.append(
            f"| `{e.notebook}` | {e.number} {e.title} (`{e.name}`) | {stars(e.difficulty)} | "
            f"{stars(e.importance)} | {e.minutes} |"
        )
    total = sum(e.minutes for e in EXERCISES)
    lines.append(f"| | **all {len(EXERCISES)} exercises** | | | **{total}** |")
    return "\n".join(lines)
