"""The overview notebook's map: every figure and table of the two papers, where it lives here,
and a verdict computed from the notebooks' saved findings (``figures/findings/*.json``).

Each :class:`Item` carries a **rule**: a function of the loaded findings (notebook name ->
:class:`repgeo_utils.report.Findings`) that returns a :class:`Verdict`. A rule reads the
findings through :func:`_get`, which raises :class:`MissingFinding` when a notebook has not
written its file yet (or wrote an older one without that finding); :func:`overview_table` turns
that into ``"not run yet"``, so the table never fails on a partial set of results.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import ROOT
from ..report import Finding, Findings, load_findings

REPRODUCED = "reproduced"
DIFFERENTLY = "reproduced differently"
PROFILE_ONLY = "paper profile only"
NOT_REPRODUCED = "not reproduced"
SHOWN = "shown, not judged"
NOT_RUN = "not run yet"
#: Every verdict a rule can give, in the order the closing count lists them.
VERDICTS = (REPRODUCED, DIFFERENTLY, NOT_REPRODUCED, SHOWN, PROFILE_ONLY, NOT_RUN)

#: The notebooks that save findings, in reading order.
NOTEBOOKS = (
    "01_finetuning",
    "02_activation_similarity",
    "03_sae_training",
    "04_token_visualization",
    "05_spectral_geometry",
    "06_pretraining_phases",
    "07_toy_model_phases",
    "08_post_training_geometry",
    "09_memorization_downstream",
)

PAPERS = {
    1: "Nadipalli (2025), fine-tuning layer by layer",
    2: "Li et al. (2025), representation geometry over training",
}

AllFindings = Mapping[str, Findings]


class MissingFinding(LookupError):
    """A rule needed a findings file or a finding that is not there."""


@dataclass(frozen=True)
class Verdict:
    verdict: str
    evidence: str = ""


@dataclass(frozen=True)
class Item:
    """One figure, table or section of a paper and where it is reproduced here."""

    paper: int
    item: str
    claim: str
    notebook: str
    section: str
    figure: str
    checks: str  # what the rule checks, in one line
    rule: Callable[[AllFindings], Verdict]


def _get(found: AllFindings, notebook: str, name: str) -> Finding:
    if notebook not in found:
        raise MissingFinding(f"no findings file for {notebook}")
    items = found[notebook].items
    if name not in items:
        raise MissingFinding(f"{notebook} recorded no {name!r}")
    return items[name]


def _matching(found: AllFindings, notebook: str, pattern: str) -> dict[str, Finding]:
    """The findings of ``notebook`` whose names match the regular expression ``pattern``
    (at least one, else :class:`MissingFinding`)."""
    if notebook not in found:
        raise MissingFinding(f"no findings file for {notebook}")
    hits = {k: v for k, v in found[notebook].items.items() if re.fullmatch(pattern, k)}
    if not hits:
        raise MissingFinding(f"{notebook} recorded nothing matching {pattern!r}")
    return hits


def _share(k: int, n: int, evidence: str) -> Verdict:
    """All of ``n`` -> reproduced, some -> reproduced differently, none -> not reproduced."""
    if n == 0:
        raise MissingFinding(evidence)
    if k == n:
        return Verdict(REPRODUCED, evidence)
    return Verdict(DIFFERENTLY if k > 0 else NOT_REPRODUCED, evidence)


def _profile_only(_: AllFindings) -> Verdict:
    return Verdict(PROFILE_ONLY, "needs hub models or a GPU; the quick profile has no counterpart")


def _shown(notebook: str) -> Callable[[AllFindings], Verdict]:
    def rule(found: AllFindings) -> Verdict:
        if notebook not in found:
            raise MissingFinding(f"no findings file for {notebook}")
        return Verdict(SHOWN, "a figure to read; the notebook records no verdict for it")

    return rule


# --- paper 1 ----------------------------------------------------------------------------------


def _p1_table2(found: AllFindings) -> Verdict:
    learned = _get(found, "01_finetuning", "every_task_learned").value
    post = _matching(found, "01_finetuning", r".+\.post_accuracy")
    tasks = [k.removesuffix(".post_accuracy") for k in post]
    gained = [
        t
        for t in tasks
        if float(post[f"{t}.post_accuracy"].value)
        > float(_get(found, "01_finetuning", f"{t}.pre_accuracy").value)
    ]
    evidence = f"every task learned: {learned}; accuracy up in {len(gained)} of {len(post)} tasks"
    if learned == "yes":
        return Verdict(REPRODUCED, evidence)
    return Verdict(DIFFERENTLY if gained else NOT_REPRODUCED, evidence)


def _p1_fig6(found: AllFindings) -> Verdict:
    weakest = str(_get(found, "01_finetuning", "tweets-3way.lowest_recall_class").value)
    evidence = f"lowest-recall class of tweets-3way: {weakest}"
    return Verdict(REPRODUCED if weakest == "neutral" else DIFFERENTLY, evidence)


def _p1_fig1(found: AllFindings) -> Verdict:
    nb = "02_activation_similarity"
    verdict = _get(found, nb, "falls_with_depth").value
    firsts = _matching(found, nb, r".+\.layer0")
    falls = 0
    for name, first in firsts.items():
        lasts = _matching(found, nb, re.escape(name.removesuffix("layer0")) + r"layer[1-9]\d*")
        falls += all(float(v.value) < float(first.value) for v in lasts.values())
    evidence = f"falls with depth: {verdict}; {falls} of {len(firsts)} task x measure curves fall"
    return _share(falls, len(firsts), evidence)


def _p1_sae(found: AllFindings) -> Verdict:
    nb = "03_sae_training"
    depths = {k.removesuffix(".features"): str(v.value)
              for k, v in _matching(found, nb, r"[a-z]+\.features").items()}  # fmt: skip
    evidence = "; ".join(f"{d}: {w}" for d, w in depths.items())
    if "early" not in depths or "late" not in depths:
        raise MissingFinding(f"{nb} lacks the early or late verdict ({evidence})")
    early_keeps, late_changes = depths["early"] == "keeps", depths["late"] != "keeps"
    return _share(int(early_keeps) + int(late_changes), 2, evidence)


def _p1_table1(found: AllFindings) -> Verdict:
    nb = "04_token_visualization"
    verdict = _get(found, nb, "late_layer_turns_class_selective").value
    pre = float(_get(found, nb, "late.pre-trained.class_selective").value)
    post = float(_get(found, nb, "late.fine-tuned.class_selective").value)
    evidence = f"late layer, class-selective top features: pre-trained {pre:g}, fine-tuned {post:g}"
    if verdict == "yes":
        return Verdict(REPRODUCED, evidence)
    return Verdict(DIFFERENTLY if post > pre else NOT_REPRODUCED, evidence)


# --- paper 2 ----------------------------------------------------------------------------------


def _p2_phases(found: AllFindings) -> Verdict:
    nb = "06_pretraining_phases"
    quick = str(_get(found, nb, "quick.compression").value)
    seeds = str(_get(found, nb, "standard.compression_seeds").value)
    match = re.fullmatch(r"(\d+) of (\d+)", seeds)
    if match is None:
        raise MissingFinding(f"{nb}: standard.compression_seeds is {seeds!r}, not 'k of n'")
    k, n = int(match[1]), int(match[2])
    quick_present = quick == "compression present"
    evidence = f"standard run: compression in {k} of {n} seeds; quick run: {quick}"
    if n and k == n and quick_present:
        return Verdict(REPRODUCED, evidence)
    return Verdict(DIFFERENTLY if k > 0 or quick_present else NOT_REPRODUCED, evidence)


def _p2_toy(found: AllFindings) -> Verdict:
    nb = "07_toy_model_phases"
    paper = str(_get(found, nb, "paper.reproduction").value)
    ours = str(_get(found, nb, "ours.verdict").value)
    evidence = f"hard labels (paper's setting): {paper}; soft targets (ours): {ours}"
    if paper == REPRODUCED:
        return Verdict(REPRODUCED, evidence)
    if paper != NOT_REPRODUCED or ours.startswith("rises then falls"):
        return Verdict(DIFFERENTLY, evidence)
    return Verdict(NOT_REPRODUCED, evidence)


def _p2_controls(*conditions: str) -> Callable[[AllFindings], Verdict]:
    def rule(found: AllFindings) -> Verdict:
        nb = "07_toy_model_phases"
        paper = str(_get(found, nb, "paper.verdict").value)
        ours = str(_get(found, nb, "ours.verdict").value)
        controls = {c: str(_get(found, nb, f"control.{c}").value) for c in conditions}
        evidence = "; ".join(f"{c}: {v}" for c, v in controls.items())
        evidence += f"; with the fall: hard labels {paper}, soft targets {ours}"
        if any(v != "no fall" for v in controls.values()):
            return Verdict(NOT_REPRODUCED, evidence)
        if paper == "rises then falls":
            return Verdict(REPRODUCED, evidence)
        if ours.startswith("rises then falls"):
            return Verdict(DIFFERENTLY, evidence)
        return Verdict(NOT_REPRODUCED, evidence + " (no fall to remove)")

    return rule


def _p2_fig6a(found: AllFindings) -> Verdict:
    nb = "08_post_training_geometry"
    where, stages = "standard", {}
    for stage in ("sft", "dpo", "rl"):
        try:
            hits = _matching(
                found, nb, rf"standard\.[^.]+\.{stage}\.rankme_covariance_probe\.verdict"
            )
        except MissingFinding:
            where = "live"
            break
        stages[stage] = [str(v.value) for v in hits.values()]
    if where == "live":
        stages = {
            s: [str(_get(found, nb, f"live.{s}.rankme_covariance_probe.verdict").value)]
            for s in ("sft", "dpo", "rl")
        }
    agree = {s: any(v == "direction as in the paper" for v in vs) for s, vs in stages.items()}
    evidence = f"{where} run, RankMe as in the paper: " + ", ".join(
        f"{s.upper()} {'yes' if a else 'no'}" for s, a in agree.items()
    )
    return _share(sum(agree.values()), len(agree), evidence)


def _p2_fig6b(found: AllFindings) -> Verdict:
    hits = _matching(found, "08_post_training_geometry", r"standard\.checkpoint_sft\..+_vs_step")
    texts = {k.split(".")[-1].removesuffix("_vs_step"): str(v.value) for k, v in hits.items()}
    agree = sum(t.startswith("as in the paper") for t in texts.values())
    evidence = "; ".join(f"{o}: {t.split(' (')[0]}" for o, t in texts.items())
    return _share(agree, len(texts), evidence)


def _p2_fig6c(found: AllFindings) -> Verdict:
    hits = _matching(found, "08_post_training_geometry", r"standard\.[^.]+\.pass_at_k")
    texts = {k.split(".")[1]: str(v.value) for k, v in hits.items()}
    evidence = "; ".join(f"{variant}: {t}" for variant, t in texts.items())
    if any(t.startswith("RL narrows") for t in texts.values()):
        return Verdict(REPRODUCED, evidence)
    if any(t.startswith(("RL wins", "RL loses")) for t in texts.values()):
        return Verdict(DIFFERENTLY, evidence)
    return Verdict(NOT_REPRODUCED, evidence)


def _fig(name: str) -> str:
    return f"figures/{name}.png"


ITEMS: tuple[Item, ...] = (
    Item(1, "Table 2", "fine-tuning raises test accuracy on all three tasks",
         "01_finetuning", "Pre-trained vs fine-tuned (the paper's Table 2)",
         _fig("01_finetuning_accuracy"),
         "every task learned (post - pre > 2 SE); else how many tasks gained accuracy", _p1_table2),
    Item(1, "Fig 6", "classification reports: the ambiguous middle class is the weakest",
         "01_finetuning", "Classification reports (the paper's Fig 6)",
         _fig("01_finetuning_classification_reports"),
         "tweets-3way's lowest-recall class is 'neutral'", _p1_fig6),
    Item(1, "Fig 1", "pre vs fine-tuned similarity falls with depth, near 1 at layer 0",
         "02_activation_similarity", "Per-layer curves (the paper's Fig 1)",
         _fig("02_similarity_mean_token_cosine"),
         "share of task x measure curves whose last layer is below layer 0", _p1_fig1),
    Item(1, "Fig 2", "shallower BERTs stay more similar at every layer",
         "02_activation_similarity", "Model size (the paper's Fig 2)",
         _fig("02_similarity_by_size"),
         "none: one model offline, the size path needs the hub BERTs", _profile_only),
    Item(1, "sections 3.2.3, 4.3", "SAE features: early layers general, late layers task-specific",
         "03_sae_training", "Which fine-tuned features were already there?",
         _fig("03_sae_feature_matching"),
         "03's matching verdict: early layer 'keeps', late layer does not", _p1_sae),
    Item(1, "Table 1", "late-layer SAE features of the fine-tuned model are task-specific",
         "04_token_visualization", "Our Table 1: what each top feature fires on", "",
         "late_layer_turns_class_selective; else more class-selective features after fine-tuning",
         _p1_table1),
    Item(1, "Figs 3-5", "token activations: sparse before, task words after fine-tuning",
         "04_token_visualization", "Token strips on test sentences (the paper's Figs 3-5)",
         _fig("04_token_strips_tweets-binary_late"),
         "none recorded: 04 saves no verdict on the strips", _shown("04_token_visualization")),
    Item(2, "section 2.1", "RankMe and alpha-ReQ as measures of the eigenspectrum",
         "05_spectral_geometry", "Two numbers from one spectrum", _fig("05_spectral_known_spectra"),
         "none recorded: known answers are checked by the unit tests", _shown("05_spectral_geometry")),
    Item(2, "Figs 1-2", "pretraining: warmup collapse, entropy-seeking rise, compression-seeking fall",
         "06_pretraining_phases", "The standard run (recorded); Final-layer trajectory",
         _fig("06_pretraining_final_layer"),
         "compression in every standard-run seed and in the quick run; part -> differently",
         _p2_phases),
    Item(2, "Fig 3", "the same phases in intermediate layers",
         "06_pretraining_phases", "Intermediate layers (paper 2's Fig 3)",
         _fig("06_pretraining_layers_rankme_covariance"),
         "none recorded: 06 saves no per-layer verdict", _shown("06_pretraining_phases")),
    Item(2, "Fig 7", "early checkpoints repeat themselves (echolalia)",
         "06_pretraining_phases", "The standard run (recorded)", "",
         "none recorded: the generations are printed, not judged", _shown("06_pretraining_phases")),
    Item(2, "Fig 10", "the phases persist in Pythia models below 1B",
         "06_pretraining_phases", "(PROFILE='paper': pythia-160m checkpoints)", "",
         "none: needs the hub's Pythia checkpoints", _profile_only),
    Item(2, "Table 1", "the infini-gram estimate mostly uses short suffixes",
         "09_memorization_downstream", "Distributional memorization", _fig("09_memorization_live"),
         "none recorded: 09 saves the memorization peak only",
         _shown("09_memorization_downstream")),
    Item(2, "Fig 4", "memorization peaks late in entropy-seeking; accuracy rises in compression",
         "09_memorization_downstream", "The standard run (recorded)",
         _fig("09_memorization_standard"),
         "none recorded: 09 saves the peak step, not its phase",
         _shown("09_memorization_downstream")),
    Item(2, "section 3.3, Fig 5A", "the linear cross-entropy toy model: RankMe rises, then falls",
         "07_toy_model_phases", "Over seeds", _fig("07_toy_model_phases_rankme"),
         "paper.reproduction; 'differently' when only our soft targets fall", _p2_toy),
    Item(2, "Fig 5B-D", "frequent classes separate first; W and U align",
         "07_toy_model_phases", "Class clusters and singular values (paper 2, Fig 5B-D)",
         _fig("07_toy_model_geometry"),
         "none recorded: 07 saves no cluster verdict", _shown("07_toy_model_phases")),
    Item(2, "Fig 12", "uniform classes or no bottleneck: no compression",
         "07_toy_model_phases", "RankMe over training, per condition", _fig("07_toy_model_phases_rankme"),
         "both controls 'no fall' while a main setting falls", _p2_controls("uniform classes", "no bottleneck")),
    Item(2, "Fig 13", "MSE instead of cross-entropy: monotonic, saturating expansion",
         "07_toy_model_phases", "RankMe over training, per condition", _fig("07_toy_model_phases_rankme"),
         "the MSE control 'no fall' while a main setting falls", _p2_controls("MSE loss")),
    Item(2, "Fig 6A", "RankMe: up in SFT and DPO, down in RLVR",
         "08_post_training_geometry", "Post-training changes over seeds",
         _fig("08_posttrain_trajectory"),
         "stages whose RankMe verdict is 'direction as in the paper' (standard run, else live)",
         _p2_fig6a),
    Item(2, "Fig 6B", "SFT from later checkpoints: ID loss down, OOD loss up",
         "08_post_training_geometry", "SFT from successive checkpoints (paper 2, Fig 6B)", "",
         "ID and OOD trends with the base's step 'as in the paper'", _p2_fig6b),
    Item(2, "Fig 6C", "RLVR wins at pass@1 and loses at large k",
         "08_post_training_geometry", "pass@k over seeds", _fig("08_posttrain_pass_at_k"),
         "a GRPO variant narrows (wins at k = 1, loses at the largest k)", _p2_fig6c),
    Item(2, "Fig 14", "ID and OOD loss over SFT",
         "08_post_training_geometry", "Measuring every checkpoint", _fig("08_posttrain_trajectory"),
         "none recorded as a paper comparison", _shown("08_post_training_geometry")),
    Item(2, "Table 2", "keeping only the top-k eigen-directions ruins accuracy",
         "08_post_training_geometry", "Eigen-direction ablation (paper 2, Table 2)",
         _fig("08_eigen_ablation"),
         "none recorded: 08 saves no ablation verdict", _shown("08_post_training_geometry")),
)  # fmt: skip


def committed_findings_dir(profile: str = "quick") -> Path:
    """``figures/findings`` (quick) or ``figures/<profile>/findings`` in the repository: the
    committed results. Unlike :func:`repgeo_utils.report.findings_dir` it ignores
    ``$REPGEO_FIGURES_DIR``, which ``make nbtest`` points at an empty temporary folder; the
    overview must read the committed files there for its checked output to hold."""
    base = ROOT / "figures" if profile == "quick" else ROOT / "figures" / profile
    return base / "findings"


def load_all(profile: str = "quick", folder: str | Path | None = None) -> dict[str, Findings]:
    """Every notebook's findings that exist in ``folder`` (default:
    :func:`committed_findings_dir`); notebooks not run yet are simply absent."""
    folder = Path(folder) if folder is not None else committed_findings_dir(profile)
    return {
        nb: load_findings(nb, profile, folder)
        for nb in NOTEBOOKS
        if (folder / f"{nb}.json").is_file()
    }


def overview_table(found: AllFindings, items: tuple[Item, ...] = ITEMS) -> pd.DataFrame:
    """One row per paper item: paper, item, claim, notebook, section, figure, verdict,
    evidence (the findings the rule read), checks (what the rule checks)."""
    unknown = set(found) - set(NOTEBOOKS)
    if unknown:
        raise ValueError(f"unknown notebooks {sorted(unknown)}; expected some of {NOTEBOOKS}")
    rows = []
    for it in items:
        try:
            v = it.rule(found)
        except MissingFinding as missing:
            v = Verdict(NOT_RUN, str(missing))
        if v.verdict not in VERDICTS:
            raise ValueError(f"{it.item}: rule returned {v.verdict!r}, not one of {VERDICTS}")
        rows.append({"paper": it.paper, "item": it.item, "claim": it.claim,
                     "notebook": it.notebook, "section": it.section, "figure": it.figure,
                     "verdict": v.verdict, "evidence": v.evidence, "checks": it.checks})  # fmt: skip
    return pd.DataFrame(rows)


def verdict_counts(table: pd.DataFrame) -> str:
    """``"23 items: 5 reproduced, 4 reproduced differently, ..."`` (verdicts with no item left
    out)."""
    counts = table["verdict"].value_counts()
    parts = [f"{int(counts[v])} {v}" for v in VERDICTS if v in counts]
    return f"{len(table)} items: " + ", ".join(parts) + "."


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def overview_markdown(found: AllFindings, items: tuple[Item, ...] = ITEMS) -> str:
    """The table as markdown, one section per paper, and the closing count."""
    table = overview_table(found, items)
    lines: list[str] = []
    for paper, part in table.groupby("paper", sort=True):
        lines += [f"### Paper {paper}: {PAPERS[int(paper)]}", "",
                  "| item | claim | where here | verdict | evidence |", "|---|---|---|---|---|"]  # fmt: skip
        for _, r in part.iterrows():
            where = f"`{r['notebook']}` § {r['section']}"
            if r["figure"]:
                where += f"; `{r['figure']}`"
            cells = (r["item"], r["claim"], where, f"**{r['verdict']}**", r["evidence"])
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    lines.append(verdict_counts(table))
    return "\n".join(lines)


__all__ = [
    "ITEMS",
    "NOTEBOOKS",
    "VERDICTS",
    "Item",
    "MissingFinding",
    "Verdict",
    "committed_findings_dir",
    "load_all",
    "overview_markdown",
    "overview_table",
    "verdict_counts",
]
