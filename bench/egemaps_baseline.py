"""The classic handcrafted baseline under the model card's leave-one-corpus-out protocol.

eGeMAPS v02 functionals (88 features per clip: pitch, loudness, spectral slope, formants,
jitter and shimmer statistics; openSMILE) and a class-weighted logistic regression, trained on
five corpora and tested on the sixth, for each corpus in turn, at 16 kHz and with the test side
through the phone line (:func:`streamer.telephony.phone_line`, mu-law). This is what a reader
of the literature would compare the bundled CNN with. Three ways to standardise the features:

- ``global``: mean and standard deviation of the training corpora (what a deployed model can do
  with no knowledge of the stream);
- ``corpus``: every corpus standardised by its own statistics, the held-out one included
  (transductive: it needs a batch of unlabelled audio from the new recording setup);
- ``speaker``: the same per speaker (transductive, and it assumes each speaker's clips span the
  classes, which the acted corpora do and a call does not).

Sample weights balance corpora and classes, as ``emotion-monitor train`` draws. Not a project
dependency: needs ``pip install opensmile scikit-learn`` (the script says so and exits 2).

    python bench/egemaps_baseline.py [--data DIR ...] [--cache /tmp/egemaps.npz] [--jobs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamer.offline.dataset import load_corpora, resolve_corpora  # noqa: E402
from streamer.telephony import phone_line  # noqa: E402

DATA = REPO.parent / "shared" / "data"
RATE = 16_000
NORMS = ("global", "corpus", "speaker")

_smile: Any = None


def _init_worker() -> None:
    global _smile
    import opensmile

    _smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                             feature_level=opensmile.FeatureLevel.Functionals)


def _features(audio: np.ndarray) -> np.ndarray:
    """(2, 88): the clip's functionals at 16 kHz and through the phone line."""
    clip = np.asarray(audio, dtype=np.float32)
    return np.stack([_smile.process_signal(x, RATE).to_numpy()[0]
                     for x in (clip, phone_line(clip))])


def extract(folders: list[str], jobs: int) -> dict[str, np.ndarray]:
    from tqdm import tqdm

    data = load_corpora(resolve_corpora(folders), progress=True)
    with multiprocessing.Pool(jobs, initializer=_init_worker) as pool:
        feats = list(tqdm(pool.imap(_features, data.audio, chunksize=16), total=len(data.audio),
                          desc="eGeMAPS", unit="clip"))
    return {"F": np.stack(feats), "y": data.targets, "corpus": data.corpora,
            "speakers": np.array(data.speakers), "labels": np.array(data.labels),
            "names": np.array(data.corpus_names)}


def standardise_by(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = x.copy()
    for g in np.unique(groups):
        m = groups == g
        out[m] = (x[m] - x[m].mean(0)) / (x[m].std(0) + 1e-6)
    return out


def balanced_weights(y: np.ndarray, corpus: np.ndarray, n_classes: int) -> np.ndarray:
    w = np.zeros(len(y))
    for c in np.unique(corpus):
        for k in range(n_classes):
            m = (corpus == c) & (y == k)
            if m.any():
                w[m] = 1.0 / m.sum()
    return w / w.mean()


def loco(d: dict[str, np.ndarray], norm: str, side: int, c_reg: float) -> list[dict[str, Any]]:
    """One row per held-out corpus: UAR and the smallest predicted share."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import recall_score

    y, corpus, n = d["y"], d["corpus"], len(d["labels"])
    train_x = d["F"][:, 0].astype(np.float64)  # training side: always 16 kHz
    test_x = d["F"][:, side].astype(np.float64)
    if norm != "global":
        groups = corpus if norm == "corpus" else d["speakers"]
        train_x, test_x = standardise_by(train_x, groups), standardise_by(test_x, groups)
    rows = []
    for held, name in enumerate(d["names"]):
        tr, te = corpus != held, corpus == held
        mu, sd = train_x[tr].mean(0), train_x[tr].std(0) + 1e-6
        clf = LogisticRegression(C=c_reg, max_iter=3000)
        weights = balanced_weights(y[tr], corpus[tr], n)
        clf.fit((train_x[tr] - mu) / sd, y[tr], sample_weight=weights)
        pred = clf.predict((test_x[te] - mu) / sd)
        present = np.unique(y[te])
        rows.append({"corpus": str(name),
                     "uar": float(recall_score(y[te], pred, labels=present, average="macro")),
                     "smallest_share": float(min((pred == k).mean() for k in present))})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append",
                    help="corpus folders (default: ../shared/data/corpora and ../shared/data/urdu)")
    ap.add_argument("--cache", type=Path, help="features .npz: read when present, else written")
    ap.add_argument("--jobs", type=int, default=2, help="feature extraction processes")
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the regression")
    args = ap.parse_args()
    try:
        import opensmile  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        print(f"bench/egemaps_baseline.py needs opensmile and scikit-learn ({exc.name} is "
              "missing): pip install opensmile scikit-learn", file=sys.stderr)
        return 2
    folders = args.data or [str(DATA / "corpora"), str(DATA / "urdu")]
    if args.cache and args.cache.is_file():
        with np.load(args.cache) as f:
            d = {k: f[k] for k in f.files}
    else:
        d = extract(folders, args.jobs)
        if args.cache:
            np.savez(args.cache, **d)
    names = [str(n) for n in d["names"]]
    print(f"{len(d['y'])} clips, corpora {', '.join(names)}, eGeMAPS v02 functionals + "
          f"logistic regression (C={args.C}), leave one corpus out\n")
    print("| standardised | test side | mean UAR | smallest share | "
          + " | ".join(names) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(names))
    for norm in NORMS:
        for side, label in ((0, "16 kHz"), (1, "phone line")):
            rows = loco(d, norm, side, args.C)
            mean = np.mean([r["uar"] for r in rows])
            smallest = min(r["smallest_share"] for r in rows)
            print(f"| {norm} | {label} | **{mean:.3f}** | {smallest:.3f} | "
                  + " | ".join(f"{r['uar']:.3f}" for r in rows) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
