"""Few-step sampling at parity: the brain validation's measures and generation metrics of the 50-step default and of
few-step samplers (DDIM 10 on the default weights; the rectified-flow weights at 10 and 5 steps), in one run.

Progression: the evaluation split's subjects (seeds 900000+, fresh against the tuning split) edited by the frozen
settings of docs/validation/brain_settings.json, PIE and the counterfactual mode, toward AD and toward their own
stage (null); generation: CN and AD samples of the LDM bundle. The parity rule is
``monai_pie.validation.few_step.PARITY``, fixed before any result was read.

Usage::

    monai-pie synth brain COHORT --num_subjects 200 --num_longitudinal 40 --visits 3 --seed 0
    python benchmarks/bench_few_step.py COHORT                      # ~50 min on 2 CPU cores
    python benchmarks/bench_few_step.py COHORT --num_subjects 2 --num_samples 3 --samplers "DDIM 50 (default),DDIM 10"
    # the evaluation split at its full size, reusing the 50-step edits `monai-pie validate brain` recorded:
    python benchmarks/bench_few_step.py COHORT --samplers "DDIM 50 (default),DDIM 10" --num_subjects 20 \
        --num_seeds 3 --shards 6 --workers 2 --work_dir outputs/validation/brain_eval
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

#: label -> (steps, overlay); the first is the reference
SAMPLERS = {"DDIM 50 (default)": (50, None), "DDIM 10": (10, None), "rectified flow 10": (10, "rectified_flow.json"),
            "rectified flow 5": (5, "rectified_flow.json")}


def seconds(row: dict, mode: str) -> str:
    """A mode's seconds per subject, or where its edits came from when they were reused rather than run."""
    value = row["seconds"][mode]
    return "reused (recorded run)" if value is None else f"{value:.1f}"


def report(result: dict, title_lines: list[str]) -> list[str]:
    from monai_pie.validation.few_step import PARITY_MODES

    rows, short = result["rows"], result["short"]
    modes = result["params"].get("modes", list(PARITY_MODES))
    holds = result["holds"]
    ref = next(iter(rows))
    lines = [*title_lines,
             f"Settings: `{result['params']['settings_file']}` (sha256 `{result['params']['settings_sha256'][:16]}...`); "
             f"{result['params']['num_subjects']} evaluation subjects x {result['params'].get('num_seeds', 1)} seed(s); "
             f"{result['params']['num_samples']} "
             f"generated volumes per covariate set (CN stage 0.05, AD stage 0.9, age 70); {result['params']['seconds']:.0f}"
             " s in all. **Synthetic to real caveat**: the cohort comes from the generator the weights were trained on.",
             "", "## Parity (against the first row)", "",
             "| sampler | steps (full run) | steps per PIE round | "
             + " | ".join(f"s per subject (AD + null edit), {m}" for m in modes)
             + " | s per generated volume | holds parity in every use | " + " | ".join(f"holds: {m}" for m in modes)
             + " | holds: generation | short on |",
             "|---|---|---|" + "---|" * len(modes) + "---|---|" + "---|" * len(modes) + "---|---|"]
    for name, r in rows.items():
        steps = next(s["num_inference_steps"] for s in result["params"]["samplers"] if s["name"] == name)
        verdict = "reference" if name == ref else ("yes" if not short[name] else "no")
        scope = [("-" if name == ref else ("yes" if ok else "no")) for ok in holds[name].values()]
        lines.append(f"| {name} | {steps} | {r['steps_per_round'][modes[0]]} | "
                     + " | ".join(seconds(r, m) for m in modes)
                     + f" | {r['generation']['seconds_per_volume']:.1f} | {verdict} | " + " | ".join(scope)
                     + f" | {'; '.join(short[name]) or '-'} |")
    for mode in modes:
        lines += ["", f"## Progression, {mode} (medians over subjects [95 % bootstrap interval])", "",
                  "| sampler | strength | ventricle r | hippocampal GM r | R^2 of the change map | identity corr | "
                  "retrieval | null / AD whole brain | deep WM / ventricle ROI |", "|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            m = r["progression"][mode]

            def cell(k: str) -> str:
                lo, hi = m["ci"][k]
                return f"{m[k]:.2f} [{lo:.2f}, {hi:.2f}]"

            lines.append(f"| {name} | {r['strength'][mode]:.3f} | {cell('ventricle_ml_ratio')} | "
                         f"{cell('hippocampal_gm_ml_ratio')} | {cell('r2')} | {cell('identity_corr')} | "
                         f"{m['retrieval']:.2f} | {cell('null_whole_brain_ratio')} | {cell('specificity')} |")
    lines += ["", "## Generation", "",
              "| sampler | Frechet distance on the reader's 4 volumes (real-vs-real floor) | AD - CN ventricle ml | "
              "AD - CN hippocampal GM ml | AD - CN GM ml | MS-SSIM between samples | nearest training image MAE |",
              "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        g = r["generation"]
        gap = g["conditioning_gap"]
        lines.append(f"| {name} | {g['fd']:.2f} ({g['fd_real_floor']:.2f}) | {gap['ventricle_ml']:+.2f} | "
                     f"{gap['hippocampal_gm_ml']:+.2f} | {gap['gm_ml']:+.1f} | {g['ms_ssim']:.3f} | "
                     f"{g['nn_gen_mean']:.4f} |")
    p = result["params"]["parity"]
    lines += ["", "## How to read it", "",
              f"- Parity rule (`monai_pie.validation.few_step.PARITY`, fixed before the run): per progression mode, "
              f"|r - 1| of each marker no more than {p['ratio_gap']} worse than the reference, R^2 and the identity "
              f"correlation no more than {p['r2_gap']} / {p['identity_gap']} lower, the null edit's whole-brain share "
              f"no more than {p['null_gap']} higher; generation: each AD - CN marker gap within "
              f"{p['conditioning_rel']:.0%} of the reference's, MS-SSIM no more than {p['diversity_gap']} higher, the "
              f"Frechet distance no more than {p['fd_factor']}x the reference's (or the reference plus the "
              "real-vs-real floor, whichever is larger).",
              "- r = reader's null-corrected change / true change (1 = exact); R^2 of the smoothed change map against "
              "the true change; identity = correlation of the edit's and the truth's subject-specific parts; "
              "retrieval = share of subjects whose change map correlates best with their own truth "
              "(`docs/validation/brain_progression.md` defines each).",
              "- Strengths tuned on the default DDPM schedule are carried to the flow at the same noise-to-signal ratio "
              "(`NoiseSchedule.matching_strength`); a PIE round runs the strength's share of the full-run steps.",
              "- Frechet distance: generated CN and AD volumes against the cohort's CN and AD training images through "
              "the autoencoder, on the reader's gm / parenchyma / hippocampal GM / ventricle volumes in units of the "
              "real spread; the floor is the same distance between two disjoint sets of real images of the generated "
              "set's size.",
              "- Times are single passes inside this run (not interleaved): read them as the step counts' cost, "
              "the speed tables are benchmarks/results/progression.md.", ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    from _harness import header, load_average

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort")
    parser.add_argument("--num_subjects", type=int, default=8)
    parser.add_argument("--num_seeds", type=int, default=1, help="noise draws per subject")
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="processes that synthesise and measure subjects")
    parser.add_argument("--shards", type=int, default=1, help="recorded parts per edit run (resumable)")
    parser.add_argument("--longitudinal", action="store_true",
                        help="also edit with the scan-conditioned model's frozen mode (samplers without an overlay)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated labels of SAMPLERS")
    parser.add_argument("--work_dir", default="outputs/validation/few_step")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "few_step.md"))
    args = parser.parse_args(argv)
    from monai_pie.utils import atomic_write_text
    from monai_pie.validation.few_step import LONGITUDINAL_MODE, PARITY_MODES, Sampler, compare_samplers

    names = [n.strip() for n in args.samplers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise SystemExit(f"unknown samplers {unknown}; choose from {list(SAMPLERS)}.")
    load_before = load_average()
    samplers = [Sampler(n, *SAMPLERS[n]) for n in names]
    result = compare_samplers(args.cohort, samplers, num_subjects=args.num_subjects, num_samples=args.num_samples,
                              work_dir=args.work_dir, num_seeds=args.num_seeds, workers=args.workers,
                              shards=args.shards,
                              modes=(*PARITY_MODES, LONGITUDINAL_MODE) if args.longitudinal else PARITY_MODES)
    title = [line for line in header("# Few-step sampling at parity: brain progression and generation", 1, load_before)
             if "interleaved" not in line]  # one validation run, not a timing table
    text = "\n".join(report(result, title))
    atomic_write_text(Path(args.out), text)
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(result, indent=1, default=float) + "\n")
    print(text)


if __name__ == "__main__":
    main()
