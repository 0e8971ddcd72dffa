"""Peak memory and time of the brain autoencoder's decode and encode against volume size: whole-volume layers (what
MONAI does) against slab-wise execution (``monai_pie.networks.use_slab_execution``, part of the inferers' default
acceleration), and the largest difference between the two outputs.

On the CPU each measurement runs in its own process, so the peak is that of one decode or encode: peak RSS above the
process's state after loading the network and input. On CUDA the peak is ``torch.cuda.max_memory_allocated`` above
the same point, per call, so the measurements share one process, each after one untimed warm-up call.
Cases run round-robin over ``--repeats``; the table gives medians. The network is the shipped ``brain_mri_ldm``
autoencoder (no attention); inputs are the bundle's example T1 (and its latent), resampled to each size.

Usage::

    python benchmarks/bench_memory.py             # 2.5 mm to 1 mm whole-head grids (~10 min on 2 CPU cores)
    python benchmarks/bench_memory.py --quick     # up to 1.75 mm (~1 min)
    python benchmarks/bench_memory.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

#: image grids (multiples of the autoencoder's 4x downsampling): the bundle's 2.5 mm grid up to a 1 mm whole head
#: (MNI 197 x 233 x 189 padded to 200 x 236 x 192)
SIZES = {"2.5 mm (bundle)": (64, 80, 64), "1.75 mm": (96, 112, 96), "1.25 mm": (128, 160, 128),
         "1 mm brain crop": (160, 192, 160), "1 mm whole head": (200, 236, 192)}
QUICK = ("2.5 mm (bundle)", "1.75 mm")
#: MONAI as is; channels-last weights only; our default (channels-last + slab-wise layers, accelerate_for_inference)
MODES = {"monai": "MONAI (whole layers)", "channels_last": "channels-last only",
         "slab": "ours: accelerate_for_inference (slabs; channels-last on the CPU only)"}


@functools.lru_cache(maxsize=None)
def _inputs(size: tuple[int, ...], device: str):
    """The shipped autoencoder (eval) and, at ``size``, the example T1 and its latent (resampled); cached, so callers
    that change the network work on a copy."""
    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F

    from monai_pie.bundle_tools import load_bundle_model

    ae = load_bundle_model(REPO / "bundles" / "brain_mri_ldm", device=device)["network"].autoencoder
    t1 = np.asarray(nib.load(REPO / "bundles" / "brain_mri_progression" / "docs" / "example_t1.nii.gz").dataobj,
                    dtype=np.float32)
    t1 = torch.from_numpy((t1 - t1.min()) / max(float(t1.max() - t1.min()), 1e-6))[None, None].to(device)
    with torch.inference_mode():
        small = F.interpolate(t1, size=(64, 80, 64), mode="trilinear")
        z = ae.encode(small)[0]
        image = F.interpolate(t1, size=size, mode="trilinear")
        latent = F.interpolate(z, size=tuple(s // 4 for s in size), mode="trilinear")
    return ae, image, latent


def _rss_peak_reset() -> bool:
    """Return freed heap to the OS and reset this process's peak RSS to its current RSS (Linux ``clear_refs``);
    False where that is unavailable."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_bytes(field: str) -> int:
    """``VmHWM`` (peak) or ``VmRSS`` (current) of this process from /proc, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(size: tuple[int, ...], op: str, mode: str, device: str, out: str) -> None:
    """One decode or encode in this process; prints a JSON line with the peak and the time, saves the output."""
    print(json.dumps(measure(size, op, mode, device, out)))


def measure(size: tuple[int, ...], op: str, mode: str, device: str, out: str) -> dict:
    """Peak memory (MB above the loaded state) and seconds of one decode or encode; saves the output to ``out``.

    On CUDA one untimed call first (kernel selection and launch set-up), and the peak is
    ``torch.cuda.max_memory_allocated``, which is per call, so CUDA measurements can share a process.
    """
    import resource

    import torch

    from monai_pie.networks import accelerate_for_inference, use_channels_last

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    ae, image, latent = _inputs(size, device)
    ae = copy.deepcopy(ae)
    if mode == "channels_last":
        use_channels_last(ae)
    if mode == "slab":
        accelerate_for_inference(ae)  # the inferers' default (the autoencoder has no attention)
    run = (lambda: ae.decode(latent)) if op == "decode" else (lambda: ae.encode(image)[0])
    if device.startswith("cuda"):
        with torch.inference_mode():
            run()  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    elif _rss_peak_reset():
        base = _rss_bytes("VmRSS")
    else:  # no peak reset: the loading peak may hide a smaller run peak
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    with torch.inference_mode():
        y = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    elif Path("/proc/self/status").exists():
        peak = _rss_bytes("VmHWM") - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    seconds = time.perf_counter() - t0
    torch.save(y.float().cpu().contiguous(), out)
    return {"peak_mb": peak / 2**20, "seconds": seconds, "out_mb": y.numel() * 4 / 2**20}


def _measure(size, op, mode, device, out) -> dict:
    if device.startswith("cuda"):  # per-call CUDA peaks need no process of their own (process start-up is seconds)
        try:
            return measure(size, op, mode, device, out)
        except Exception as e:  # noqa: BLE001 - one failed case becomes a table cell, not a lost table
            return {"error": f"{type(e).__name__}: {str(e)[:120]}"}
    cmd = [sys.executable, __file__, "--worker", "x".join(map(str, size)), op, mode, "--device", device, "--out", out]
    # large blocks straight from mmap, so freed tensors leave RSS at once and the peak counts live tensors only
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:120]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two smallest grids only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None, help="table path (default benchmarks/results/memory.md)")
    parser.add_argument("--worker", nargs=3, metavar=("SIZE", "OP", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        size, op, mode = args.worker
        worker(tuple(int(v) for v in size.split("x")), op, mode, args.device, args.out)
        return

    import statistics

    from _harness import header, interleaved, load_average

    from monai_pie.networks import DEFAULT_SLAB_VOXELS

    load_before = load_average()
    names = QUICK if args.quick else tuple(SIZES)
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    cases = {}
    for name in names:
        for op in ("decode", "encode"):
            for mode in MODES:
                path = str(tmp / f"{name.replace(' ', '_')}_{op}_{mode}.pt")
                cases[(name, op, mode)] = (lambda s=SIZES[name], o=op, m=mode, p=path: _measure(s, o, m, args.device, p))
    runs = interleaved({k: v for k, v in cases.items()}, args.repeats, log=lambda s: print(s, flush=True))

    import torch

    unit = "peak CUDA MB" if args.device.startswith("cuda") else "peak RSS MB"
    lines = header("# Autoencoder memory against volume size: MONAI's whole-volume layers vs our default acceleration",
                   args.repeats, load_before, args.device)
    lines += [
        "Shipped `brain_mri_ldm` autoencoder (channels 16/32/64, no attention). "
        f"{unit}: " + ("`torch.cuda.max_memory_allocated` above the state after loading the network and input, "
                       "after one untimed warm-up call; PyTorch's default TF32 convolutions" if args.device != "cpu"
                       else "above the process after loading the network and input (glibc told to mmap blocks over "
                       "128 kB, heap trimmed, peak RSS reset through /proc/self/clear_refs)") + ". Settings: " + "; ".join(
            f"`{k}` = {v}" for k, v in MODES.items())
        + f" (`accelerate_for_inference`, the inferers' default; slabs of {DEFAULT_SLAB_VOXELS:,} voxels, layers "
        "up to 4 slabs run whole). Error: largest |output - MONAI's output| over the volume, and that over the "
        "output's standard deviation.", "",
        "| grid | size | op | setting | " + unit + " | vs MONAI | s (median) | vs MONAI | max abs error | "
        "error / output std |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        for op in ("decode", "encode"):
            size = "x".join(map(str, SIZES[name]))
            row = {}
            for mode in MODES:
                res = runs[(name, op, mode)]
                errors = [r["error"] for r in res if "error" in r]
                row[mode] = errors[0] if errors else {
                    k: statistics.median(r[k] for r in res) for k in ("peak_mb", "seconds")}
            ref = row["monai"]
            ref_out = None if isinstance(ref, str) else torch.load(tmp / f"{name.replace(' ', '_')}_{op}_monai.pt")
            for mode, label in MODES.items():
                r = row[mode]
                if isinstance(r, str):
                    lines.append(f"| {name} | {size} | {op} | {label} | {r} | | | | | |")
                    continue
                err_cells = "- | - |"
                if ref_out is not None and mode != "monai":
                    out = torch.load(tmp / f"{name.replace(' ', '_')}_{op}_{mode}.pt")
                    err = float((out - ref_out).abs().max())
                    err_cells = f"{err:.1e} | {err / float(ref_out.std()):.1e} |"
                vs_mem = "" if isinstance(ref, str) else f"{(r['peak_mb'] / max(ref['peak_mb'], 1e-9) - 1) * 100:+.0f} %"
                vs_t = "" if isinstance(ref, str) else f"{ref['seconds'] / r['seconds']:.2f}x"
                lines.append(f"| {name} | {size} | {op} | {label} | {r['peak_mb']:.0f} | {vs_mem} | "
                             f"{r['seconds']:.2f} | {vs_t} | {err_cells}")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / (
        "memory.md" if args.device == "cpu" else f"{args.device}/memory.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
