"""Seconds per denoiser call: the network as MONAI builds it, our default acceleration, and ``torch.compile``.

One denoiser call is what a sampler step costs: the U-Net on a batch of 2 latents with classifier-free guidance (the
conditioned and the null half) or of 1 without it (``guidance_scale=1``, DDIM inversion). Three methods on the same
weights, in one process, interleaved round-robin with repeats (benchmarks/_harness.py): as built, ours
(``accelerate_for_inference``), and ours under ``torch.compile`` (inductor, static shapes; its first call, the
compile, is timed separately), which is what ``compile_denoiser=True`` runs: under compilation our accelerated layers
take PyTorch's plain path and inductor fuses them. The sampler itself calls batch-1 3D inputs on the CPU eagerly
(``monai_pie.networks.compiled``); this table shows why. Break-even: how many PIE rounds (25 steps each) the compile
time buys back.

    python benchmarks/bench_denoiser.py --repeats 8   # 2D 64x64 latent, 3D 24^3, brain bundle; ~8 min on 2 cores
    python benchmarks/bench_denoiser.py --device cuda # on a GPU, with CUDA-graph replay of ours as a fourth method
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import header, interleaved, load_average, median_min_flag  # noqa: E402
from bench_progression import CASES, build  # noqa: E402

STEPS_PER_ROUND = 25
CALLS_PER_REPEAT = 3
BATCHES = {1: "1 (no guidance)", 2: "2 (guidance)"}
METHODS = {"plain": "as built", "ours": "ours (default)", "compiled": "ours + torch.compile",
           "graphed": "ours + CUDA graphs (the sampler's GPU default)"}


def _graphed(unet):
    """``unet`` called through the samplers' CUDA-graph replay (``graphed_denoise`` wants a ``denoise`` method)."""
    import torch

    from monai_pie.networks.cuda_graphs import graphed_denoise

    class Denoiser(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def denoise(self, x, timesteps, context):
            return self.unet(x, timesteps=timesteps, context=context)

    wrapper = Denoiser(unet)
    call = lambda x, timesteps, context: graphed_denoise(wrapper, x, timesteps, context)  # noqa: E731
    call.keep = wrapper  # the graph cache holds the wrapper weakly
    return call


def prepare(name: str, batch: int, compile_too: bool, device: str = "cpu") -> tuple[dict, tuple, float]:
    """The case's denoisers on ``device``, the inputs of one call and the compile seconds (0 without
    ``compile_too``)."""
    import torch

    from monai_pie.networks.acceleration import accelerate_for_inference

    net, x, cond = build(CASES[name])
    net, x = net.to(device), x.to(device)
    cond = cond.to(device) if torch.is_tensor(cond) else {k: v.to(device) for k, v in cond.items()}
    with torch.inference_mode():
        z = net.encode(x)
        z = torch.cat([z + 0.1 * torch.randn_like(z) for _ in range(batch)])
        context = net.make_condition(cond).context
        context = context.expand(batch, *context.shape[1:]).contiguous()
    t = torch.full((batch,), 500, device=device)
    nets = {"plain": net.unet, "ours": accelerate_for_inference(copy.deepcopy(net.unet))}
    if str(device).startswith("cuda"):
        nets["graphed"] = _graphed(nets["ours"])
    compile_s = 0.0
    if compile_too:
        nets["compiled"] = torch.compile(copy.deepcopy(nets["ours"]), dynamic=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            nets["compiled"](z, timesteps=t, context=context)
        _sync(device)
        compile_s = time.perf_counter() - t0
    return nets, (z, t, context), compile_s


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    ap.add_argument("--no_compile", action="store_true", help="skip torch.compile (it needs a C++ compiler)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "denoiser.md"))
    args = ap.parse_args()
    import torch

    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not chosen or any(c not in CASES for c in chosen):
        raise SystemExit(f"--cases must name some of {list(CASES)}, got {args.cases!r}.")
    before = load_average()
    rows = []
    for name in chosen:
        for batch in BATCHES:
            nets, (z, t, context), compile_s = prepare(name, batch, not args.no_compile, args.device)
            with torch.inference_mode():
                ref = nets["plain"](z, timesteps=t, context=context)
                error = {m: float((n(z, timesteps=t, context=context) - ref).abs().max()) for m, n in nets.items()}

                def timed(net):
                    def run() -> float:
                        _sync(args.device)
                        t0 = time.perf_counter()
                        for _ in range(CALLS_PER_REPEAT):
                            net(z, timesteps=t, context=context)
                        _sync(args.device)
                        return (time.perf_counter() - t0) / CALLS_PER_REPEAT
                    return run

                runs = interleaved({m: timed(n) for m, n in nets.items()}, args.repeats)
            base, ours = statistics.median(runs["plain"]), statistics.median(runs["ours"])
            for m, times in runs.items():
                med, low, flag = median_min_flag(times)
                compile_cell = break_even = ""
                if m == "compiled":
                    saved = ours - med
                    compile_cell = f"{compile_s:.0f} s"
                    break_even = f"{compile_s / (saved * STEPS_PER_ROUND):.0f} rounds" if saved > 0 else "never"
                rows.append(f"| {name} | {'x'.join(str(s) for s in z.shape[2:])} | {BATCHES[batch]} | {METHODS[m]} | "
                            f"{med * 1e3:.1f} / {low * 1e3:.1f} | {base / med:.2f}x | {ours / med:.2f}x | "
                            f"{compile_cell} | {break_even} | {error[m]:.1e} | {flag} |")
                print(rows[-1], file=sys.stderr)
    lines = header("Denoiser call (one sampler step's U-Net): as built, our default acceleration, torch.compile",
                   args.repeats, before, args.device)
    lines += [f"Each repeat times {CALLS_PER_REPEAT} calls; `compile` is the compiled network's first call; "
              f"break-even is compile time / (time saved per call x {STEPS_PER_ROUND} steps of a PIE round); "
              "`max abs diff` is against the network as built. Cases as in bench_progression.py (random weights with a "
              "non-zero output layer, or the shipped brain network).", "",
              "| case | latent | batch | method | ms/call (median / min) | vs as built | vs ours | compile | break-even "
              "| max abs diff | note |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
