"""How far the inference speed-ups move the shipped brain progression: frames of the accelerated fp32 path (fused
attention, channels-last, slab-wise large layers; the default), of the bf16 denoiser and of the compiled denoiser
(``compile_denoiser``, fp32 and bf16), against the unaccelerated fp32 path, on the bundle's example T1 with the bundle's settings and seed. Sizes are given beside the edit itself
(the mean |frame_k - frame_0|), so a difference reads as a share of what PIE changes.

Usage::

    python benchmarks/bench_fidelity.py              # 8 rounds (~3 min on 2 CPU cores, compiling included)
    python benchmarks/bench_fidelity.py --rounds 2
    python benchmarks/bench_fidelity.py --bundle cxr_progression   # the 2D bundle -> results/fidelity_cxr.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

#: bundle -> its example input (the bundle's own settings and seed are used)
EXAMPLES = {"brain_mri_progression": "example_t1.nii.gz", "cxr_progression": "example_cxr.png"}
#: setting -> (precision, accelerate, compile_denoiser)
SETTINGS = {"unaccelerated fp32": ("fp32", False, False), "accelerated fp32 (default)": ("fp32", True, False),
            "accelerated bf16": ("bf16", True, False), "compiled fp32": ("fp32", True, True),
            "compiled bf16": ("bf16", True, True)}


def frames(bundle: str, precision: str, accelerate: bool, compile_denoiser: bool, rounds: int):
    """``(frames (R + 1, 1, *spatial), seconds)`` of one progression of ``bundle``'s example with a freshly loaded
    network (the model-grid frames the inferer returns; no ROI)."""
    import torch

    from monai_pie.bundle_tools import load_bundle_model

    root = REPO / "bundles" / bundle
    loaded = load_bundle_model(root, overrides={"bundle_root": str(root), "compile_denoiser": compile_denoiser,
                                                "num_rounds": rounds, "progress": False})
    parser = loaded["parser"]
    inferer = parser.get_parsed_content("inferer")
    inferer.sampler.accelerate, inferer.sampler.precision = accelerate, precision
    if bundle == "cxr_progression":
        item = parser.get_parsed_content("preprocessing")({"image": str(root / "docs" / EXAMPLES[bundle]),
                                                             "prompt": parser["prompt"], "seed": parser["seed"]})
        cond = [parser["prompt"]]
    else:
        item = parser.get_parsed_content("preprocessing")({"image": str(root / "docs" / EXAMPLES[bundle])})
        cond = {"age": torch.tensor([float(parser["age"])]), "sex": torch.tensor([float(parser["sex"])]),
                "stage": torch.tensor([float(parser.get_parsed_content("target_stage_value"))])}
    x = item["image"].as_tensor()[None] if hasattr(item["image"], "as_tensor") else item["image"][None]
    t0 = time.perf_counter()
    with torch.no_grad():
        res = inferer(x, loaded["network"], condition=cond, seed=int(parser["seed"]))
    return res.frames[:, 0].float(), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    from _harness import header, load_average

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--bundle", default="brain_mri_progression", choices=sorted(EXAMPLES))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out_path = args.out or str(REPO / "benchmarks" / "results" / ("fidelity.md" if args.bundle == "brain_mri_progression"
                                                                  else "fidelity_cxr.md"))
    load_before = load_average()
    out = {name: frames(args.bundle, *setting, args.rounds) for name, setting in SETTINGS.items()}
    ref, _ = out["unaccelerated fp32"]
    edit = (ref[1:] - ref[:1]).abs().mean()
    lines = header(f"# Shipped {args.bundle}: accelerated, bf16 and compiled frames against unaccelerated fp32 "
                   f"({args.rounds} rounds, bundle settings, the bundle's example)", 1, load_before)
    lines += ["Intensities in [0, 1] (the bundle's preprocessing). Edit: mean |frame_k - frame_0| of the reference "
              f"over rounds = {float(edit):.4f}. One run each, in order: the seconds are indicative only (speed "
              "tables: progression.md; a compiled setting's seconds include compiling).", "",
              "| setting | s / progression | mean abs diff | max abs diff | mean abs diff / edit | "
              "last frame: mean abs diff / edit | vs the default: mean / max abs diff |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    default, _ = out["accelerated fp32 (default)"]
    for name, (f, seconds) in out.items():
        d = (f - ref).abs()
        last = d[-1].mean() / (ref[-1] - ref[0]).abs().mean()
        vs_default = (f - default).abs()
        lines.append(f"| {name} | {seconds:.1f} | {float(d.mean()):.2e} | {float(d.max()):.2e} | "
                     f"{float(d[1:].mean() / edit):.2%} | {float(last):.2%} | "
                     f"{float(vs_default.mean()):.1e} / {float(vs_default.max()):.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(out_path).write_text(text)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
