"""Scaling-law fits over the evaluation points of several runs (Cherti et al., 2023).

    python -m trainer.scaling runs/* --metric zeroshot/acc1 --x train_flops,samples_seen \
        --output fit.json --plot fit.png

Every `eval` row of each run's metrics.jsonl (written by `trainer/train.py --eval ...`) is a
point (x, E) with E = 1 - metric (or the metric itself with --lower-is-better). The fit takes
the Pareto front (the points with a lower E than every point of smaller x, over all runs), fits
E = beta * x^alpha by least squares in log-log space, and gives 95% intervals for alpha and beta
from a seeded bootstrap over the front's points.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

X_AXES = ("train_flops", "samples_seen", "step")


def load_points(run_dirs, metric: str, x: str, lower_is_better: bool = False) -> list[dict]:
    """Evaluation points of every run, in run then step order."""
    points = []
    for run in run_dirs:
        path = Path(run) / "metrics.jsonl"
        if not path.is_file():
            raise ValueError(f"{run}: no metrics.jsonl (is it a trainer/train.py --output-dir?)")
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if metric not in row.get("eval", {}):
                continue
            value = float(row["eval"][metric])
            error = value if lower_is_better else 1.0 - value
            points.append(
                {
                    "run": Path(run).name,
                    "model": row.get("model"),
                    "step": row["step"],
                    "x": float(row[x]),
                    "error": error,
                }
            )
    if not points:
        raise ValueError(f"no evaluation rows with {metric!r} in {', '.join(map(str, run_dirs))}")
    return points


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats with less or equal x: ascending x, strictly falling E."""
    front, best = [], math.inf
    for p in sorted(points, key=lambda p: (p["x"], p["error"])):
        if p["error"] < best and p["x"] > 0 and p["error"] > 0:
            front.append(p)
            best = p["error"]
    return front


def fit_power_law(x, error) -> tuple[float, float, float]:
    """(alpha, beta, r2) of error = beta * x^alpha, least squares on log error vs log x."""
    lx, le = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(error, dtype=float))
    alpha, log_beta = np.polyfit(lx, le, 1)
    residual = le - (alpha * lx + log_beta)
    total = le - le.mean()
    r2 = 1.0 - float(residual @ residual) / float(total @ total) if total.any() else 1.0
    return float(alpha), float(math.exp(log_beta)), r2


def bootstrap(x, error, rounds: int, seed: int) -> dict[str, list[float]]:
    """95% percentile intervals of alpha and beta over fits to resampled points."""
    x, error = np.asarray(x, dtype=float), np.asarray(error, dtype=float)
    rng = np.random.default_rng(seed)
    alphas, betas = [], []
    for _ in range(rounds):
        pick = rng.integers(0, len(x), len(x))
        if len(np.unique(x[pick])) < 2:
            continue  # a fit needs two distinct x
        a, b, _ = fit_power_law(x[pick], error[pick])
        alphas.append(a)
        betas.append(b)
    if not alphas:
        return {"alpha_ci95": [math.nan, math.nan], "beta_ci95": [math.nan, math.nan]}
    return {
        "alpha_ci95": [float(v) for v in np.percentile(alphas, [2.5, 97.5])],
        "beta_ci95": [float(v) for v in np.percentile(betas, [2.5, 97.5])],
    }


def fit(points: list[dict], rounds: int = 1000, seed: int = 0) -> dict:
    front = pareto_front(points)
    if len(front) < 3:
        raise ValueError(
            f"the Pareto front has {len(front)} point(s); a fit needs at least 3 "
            "(more runs, or --eval-every for more points per run)"
        )
    xs, es = [p["x"] for p in front], [p["error"] for p in front]
    alpha, beta, r2 = fit_power_law(xs, es)
    intervals = bootstrap(xs, es, rounds, seed)
    return {"alpha": alpha, "beta": beta, "r2": r2, **intervals, "front": front}


def plot(fits: dict, points_by_x: dict, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fits), figsize=(5.5 * len(fits), 4.2), squeeze=False)
    for ax, (x_name, result) in zip(axes[0], fits.items()):
        points = points_by_x[x_name]
        for run in sorted({p["run"] for p in points}):
            mine = [p for p in points if p["run"] == run]
            ax.scatter([p["x"] for p in mine], [p["error"] for p in mine], s=14, label=run)
        front = result["front"]
        ax.plot([p["x"] for p in front], [p["error"] for p in front], "k.", ms=10, mfc="none")
        grid = np.geomspace(min(p["x"] for p in points), max(p["x"] for p in points), 50)
        ax.plot(grid, result["beta"] * grid ** result["alpha"], "k--", lw=1.2)
        lo, hi = result["alpha_ci95"]
        law = f"E = {result['beta']:.3g} · x^{result['alpha']:.3f}"
        ax.set_title(f"{law}  (α 95%: {lo:.3f}..{hi:.3f})", fontsize=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(x_name)
        ax.set_ylabel(f"error ({metric})")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m trainer.scaling",
        description="Fit E = beta * x^alpha on the Pareto front of several runs' eval points.",
    )
    p.add_argument("runs", nargs="+", help="trainer/train.py output dirs (with metrics.jsonl)")
    p.add_argument("--metric", required=True, help="an eval key, e.g. zeroshot/acc1")
    p.add_argument("--x", default="train_flops", help=f"comma list of x axes: {', '.join(X_AXES)}")
    p.add_argument("--lower-is-better", action="store_true", help="fit the metric, not 1 - metric")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds for the intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--output", default="fit.json", help="fit JSON")
    p.add_argument("--plot", help="PNG of the points, the front and the fitted line")
    args = p.parse_args(argv)
    axes = [a.strip() for a in args.x.split(",") if a.strip()]
    unknown = [a for a in axes if a not in X_AXES]
    if unknown:
        p.error(f"--x {unknown[0]}: choose from {', '.join(X_AXES)}")
    points_by_x = {a: load_points(args.runs, args.metric, a, args.lower_is_better) for a in axes}
    fits = {a: fit(points_by_x[a], args.bootstrap, args.seed) for a in axes}
    result = {
        "metric": args.metric,
        "error": args.metric if args.lower_is_better else f"1 - {args.metric}",
        "runs": [str(r) for r in args.runs],
        "fits": fits,
        "points": points_by_x[axes[0]],
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(fits, points_by_x, args.metric, Path(args.plot))
    for a, f in fits.items():
        lo, hi = f["alpha_ci95"]
        print(
            f"{a}: E = {f['beta']:.4g} * x^{f['alpha']:.4f} (alpha 95% {lo:.4f}..{hi:.4f}, "
            f"r2 {f['r2']:.3f}, {len(f['front'])} front points of {len(points_by_x[a])})"
        )
    print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
