"""Seconds per PIE round and peak memory: ProgressionInferer vs the loop a MONAI user writes today.

Baseline ("MONAI loop"): MONAI's ``LatentDiffusionInferer.sample`` with ``DDIMScheduler`` timesteps sliced to start
at the strength (``set_timesteps(50)`` then ``timesteps[-25:]``), noise added with ``scheduler.add_noise``,
classifier-free guidance through the inferer's ``cfg`` argument, the PIE blend in latent space, and the image
decoded by the inferer and re-encoded at the start of every round (it has no way to stay in latent space).
A second baseline runs the same loop on networks built with MONAI's ``use_flash_attention=True``.
Ours: ``ProgressionInferer`` with the same networks, steps, strength, guidance and blend; latents stay latent and only
the returned frames are decoded (residual decoding, one extra decode). Five settings: unaccelerated
(``accelerate=False``, the inferer before fused attention and channels-last weights), the default,
``precision="bf16"``, and both with the denoiser compiled (``compile_denoiser=True``; its first call, which compiles,
is reported beside the rounds with the number of rounds it takes to pay for itself).

On the CPU each case runs in its own process so peak RSS is per case (on CUDA the peak allocated memory is reset per
case, in one process); all cases run
round-robin, ``--repeats`` times (benchmarks/_harness.py), and the table gives medians, minima and the ratio of
medians beside the median of the per-repeat ratios.

    python benchmarks/bench_progression.py --repeats 3   # full table (2D 64x64 latent, 3D 24^3, brain bundle), ~20 min on 2 cores
    python benchmarks/bench_progression.py --quick       # smaller sizes
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "2D": {"spatial_dims": 2, "image": 128, "ae": (32, 64), "unet": (32, 64, 64), "ctx": 8},
    "3D": {"spatial_dims": 3, "image": 48, "ae": (16, 32), "unet": (16, 32, 32), "ctx": 8},
    "brain bundle": {"bundle": "brain_mri_progression"},
}
QUICK = {"2D": {"image": 64}, "3D": {"image": 32}, "brain bundle": {}}
#: what is compared: the MONAI loop on networks as configured (MONAI's defaults: einsum attention), the same loop on
#: networks built with MONAI's ``use_flash_attention=True`` (the best a MONAI user can do by configuration), and our
#: inferer without its acceleration (the inferer as it was), with it (the default), and with bf16 denoising
METHODS = {"monai": "MONAI loop", "monai_sdpa": "MONAI loop, flash attention", "plain": "ours, unaccelerated",
           "ours": "ours (default)", "bf16": "ours, bf16 denoiser", "compiled": "ours, compiled denoiser",
           "compiled_bf16": "ours, compiled bf16 denoiser"}
#: methods that compile the denoiser (``compile_denoiser=True``): their first call includes the compilation
#: CUDA only: the default without CUDA-graph replay of the denoiser (on the CPU it is the default itself)
CUDA_METHODS = {"ours_eager": "ours, no CUDA graphs"}


def build(case: dict, flash: bool = False):
    """``(LatentDiffusionModel, image (1, 1, *spatial), raw condition)`` of a case, random weights or the bundle's."""
    import torch
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    from monai_pie import LatentDiffusionModel

    torch.manual_seed(0)
    if "bundle" in case:
        from monai_pie.bundle_tools import load_bundle_model

        loaded = load_bundle_model(case["bundle"])
        net = loaded["network"]
        x = torch.rand((1, 1, *loaded["parser"]["image_size"]))
        cond = {"age": torch.tensor([72.0]), "sex": torch.tensor([0.0]), "stage": torch.tensor([0.9])}
    else:
        sd = case["spatial_dims"]
        ae = AutoencoderKL(spatial_dims=sd, in_channels=1, out_channels=1, channels=case["ae"], latent_channels=3,
                           attention_levels=(False,) * len(case["ae"]), num_res_blocks=1, norm_num_groups=16)
        unet = DiffusionModelUNet(spatial_dims=sd, in_channels=3, out_channels=3, channels=case["unet"],
                                  attention_levels=(False, False, True), num_res_blocks=1, norm_num_groups=16,
                                  num_head_channels=16, with_conditioning=True, cross_attention_dim=case["ctx"])
        for p in unet.out.parameters():  # MONAI zero-initialises the output layer: an all-zero denoiser is no test
            torch.nn.init.normal_(p, std=0.05)
        net = LatentDiffusionModel(unet, ae)
        x = torch.rand((1, 1) + (case["image"],) * sd)
        cond = torch.randn(1, 1, case["ctx"])
    if flash:
        for m in net.modules():
            if hasattr(m, "use_flash_attention"):
                m.use_flash_attention = True
    return net.eval(), x, cond


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def run_case(name: str, method: str, rounds: int, quick: bool, device_name: str) -> dict:
    import torch
    from monai.inferers import LatentDiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    from monai_pie import ProgressionInferer

    case = dict(CASES[name], **(QUICK[name] if quick else {}))
    device = torch.device(device_name)
    if method.startswith("compiled"):  # on CUDA all repeats share a process: each first call compiles afresh
        from monai_pie.networks import compiled

        torch._dynamo.reset()
        compiled._COMPILED = None
    net, x, cond = build(case, flash=method == "monai_sdpa")
    net, x = net.to(device), x.to(device)
    cond = cond.to(device) if torch.is_tensor(cond) else {k: v.to(device) for k, v in cond.items()}
    steps, strength, w, b_in = 50, 0.5, 7.5, 0.75

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        if method in ("plain", "ours", "bf16", "ours_eager", "compiled", "compiled_bf16"):
            inferer = ProgressionInferer(DDIMScheduler(1000, clip_sample=False), num_rounds=rounds, strength=strength,
                                         num_inference_steps=steps, guidance_scale=w, blend_in=b_in,
                                         reinject_background=False, progress=False, accelerate=method != "plain",
                                         precision="bf16" if method.endswith("bf16") else "fp32",
                                         compile_denoiser=method.startswith("compiled"))
            inferer.sampler.cuda_graphs = method != "ours_eager"
            t0 = time.perf_counter()
            inferer(x, net, condition=cond, seed=0)  # warm-up (one full call; compiles a compiled denoiser)
            sync()
            first_call = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = inferer(x, net, condition=cond, seed=0)
            sync()
            elapsed = time.perf_counter() - t0
            assert res.frames.shape[0] == rounds + 1
        else:
            scheduler = DDIMScheduler(1000, clip_sample=False)
            ae, unet, scale = net.autoencoder, net.unet, float(net.scale_factor)
            ctx = net.make_condition(cond).context  # the context tensor the U-Net takes
            ldm = LatentDiffusionInferer(scheduler, scale_factor=scale)

            def monai_loop(n_rounds: int):
                frames, img = [x], x
                z_star = ae.encode_stage_2_inputs(x) * scale
                for _ in range(n_rounds):
                    z = ae.encode_stage_2_inputs(img) * scale  # re-encode the previous frame
                    scheduler.set_timesteps(steps)
                    scheduler.timesteps = scheduler.timesteps[-int(steps * strength):]
                    z_k = scheduler.add_noise(z, torch.randn_like(z), scheduler.timesteps[:1])
                    # the PIE blend needs the latent, so the user samples latents with cfg, then decodes
                    z_hat = ldm.sample(input_noise=z_k, autoencoder_model=ae, diffusion_model=unet,
                                       scheduler=scheduler, conditioning=ctx, cfg=w, cfg_fill_value=0.0,
                                       verbose=False, save_intermediates=False)
                    # LatentDiffusionInferer.sample returns the decoded image; re-encode to blend in latent space
                    z_hat = ae.encode_stage_2_inputs(z_hat) * scale
                    z_n = z_star + b_in * (z_hat - z_star)
                    img = ae.decode_stage_2_outputs(z_n / scale)
                    frames.append(img)
                return frames

            t0 = time.perf_counter()
            monai_loop(rounds)  # warm-up (the same call)
            sync()
            first_call = time.perf_counter() - t0
            t0 = time.perf_counter()
            frames = monai_loop(rounds)
            sync()
            elapsed = time.perf_counter() - t0
            assert len(frames) == rounds + 1
    with torch.no_grad():
        latent = "x".join(str(s) for s in net.encode(x).shape[2:])
    return {"case": name, "method": method, "image": "x".join(str(s) for s in x.shape[2:]), "latent": latent,
            "steps_per_round": int(steps * strength), "rounds": rounds, "sec_per_round": elapsed / rounds,
            "first_call_sec": first_call,
            "peak_mem_mb": peak_memory_mb(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "progression.md"))
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    ap.add_argument("--no_compile", action="store_true",
                    help="leave out the compiled-denoiser methods (minutes of compiling; inductor needs a C compiler)")
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_case(args.worker[0], args.worker[1], args.rounds, args.quick, args.device)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from _harness import header, interleaved, load_average, median_min_flag

    def worker(name: str, method: str):
        if args.device.startswith("cuda"):  # CUDA peaks reset per case: no process start-up (seconds) per repeat
            return lambda: run_case(name, method, args.rounds, args.quick, args.device)
        cmd = [sys.executable, __file__, "--worker", name, method, "--rounds", str(args.rounds), "--device", args.device]
        cmd += ["--quick"] if args.quick else []
        return lambda: json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
                                  .splitlines()[-1])

    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not chosen or any(c not in CASES for c in chosen):
        raise SystemExit(f"--cases must name some of {list(CASES)}, got {args.cases!r}.")
    before = load_average()
    methods = {**METHODS, **(CUDA_METHODS if args.device.startswith("cuda") else {})}
    if args.no_compile:
        methods = {m: label for m, label in methods.items() if not m.startswith("compiled")}
    cases = {f"{name} {method}": worker(name, method) for name in chosen for method in methods}
    runs = interleaved(cases, args.repeats, log=lambda msg: print(f"  {msg[:120]}", file=sys.stderr))
    first = runs[next(iter(runs))][0]
    lines = header(f"PIE round, {first['steps_per_round']} DDIM steps (50 at strength 0.5), guidance 7.5, batch 1, "
                   f"{args.rounds} rounds per process: ProgressionInferer against the MONAI loop", args.repeats,
                   before, args.device)
    lines += ["Speed-ups are ratios of medians, with the median of the per-repeat ratios in brackets. `2D` / `3D`: "
              "random weights, MONAI's default autoencoder (non-local attention at the latent level); `brain bundle`: "
              "the shipped brain_mri_progression network and weights (no autoencoder attention). `first call`: the "
              f"warm-up call of {args.rounds} rounds (median), which for a compiled denoiser includes compiling it "
              "(from inductor's on-disk cache after the first process); `break-even`: rounds after which the compiled "
              "denoiser has paid for its first call against the same precision uncompiled (the default, or the bf16 "
              "row).", "",
              "| case | image | latent | method | s/round (median / min) | peak MB | vs MONAI loop | vs MONAI loop, "
              "flash attention | vs ours unaccelerated | first call s | break-even rounds | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in chosen:
        times = {m: [r["sec_per_round"] for r in runs[f"{name} {m}"]] for m in methods}

        def versus(method: str, base: str) -> str:
            if method == base:
                return "1.00x"
            paired = statistics.median(a / b for a, b in zip(times[base], times[method]))
            return f"{statistics.median(times[base]) / statistics.median(times[method]):.2f}x ({paired:.2f}x)"

        first = {m: statistics.median(r["first_call_sec"] for r in runs[f"{name} {m}"]) for m in methods}

        def break_even(method: str) -> str:
            """Rounds until the compiled denoiser's extra first-call time is repaid by its faster rounds."""
            if not method.startswith("compiled"):
                return ""
            base = "bf16" if method.endswith("bf16") else "ours"
            extra = first[method] - first[base] - args.rounds * (statistics.median(times[method])
                                                                 - statistics.median(times[base]))
            saved = statistics.median(times[base]) - statistics.median(times[method])
            return f"{max(extra, 0.0) / saved:.0f}" if saved > 0 else "never"

        for method, label in methods.items():
            med, low, flag = median_min_flag(times[method])
            row = runs[f"{name} {method}"]
            lines.append(f"| {name} | {row[0]['image']} | {row[0]['latent']} | {label} | {med:.2f} / {low:.2f} | "
                         f"{max(r['peak_mem_mb'] for r in row):.0f} | {versus(method, 'monai')} | "
                         f"{versus(method, 'monai_sdpa')} | {versus(method, 'plain')} | {first[method]:.1f} | "
                         f"{break_even(method)} | {flag} |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
