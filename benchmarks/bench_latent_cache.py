"""Seconds per latent-diffusion training iteration: encoding every batch (baseline) vs the latent cache.

Baseline: ``LatentDiffusionPrepareBatch(latent_cache_size=0)``, i.e. the frozen autoencoder encodes each batch at
every iteration (what the model-zoo LDM bundles do). Ours: ``latent_cache_size=1024``: each distinct image is encoded
once (first epoch) and its latent reused. Both run the brain bundle's shipped networks (``bundles/brain_mri_ldm``;
speed does not depend on the weights) through MONAI's ``SupervisedTrainer`` on the same random 64x80x64 volumes.

    python benchmarks/bench_latent_cache.py --repeats 3  # 16 volumes, batch 4, 3 epochs, cases round-robin (~1 min a repeat)
    python benchmarks/bench_latent_cache.py --quick      # 8 volumes, 2 epochs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_case(cache_size: int, num_images: int, batch: int, epochs: int, device: str = "cpu") -> dict[str, float]:
    import torch
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer

    from monai_pie.bundle_tools import load_bundle_model
    from monai_pie.engines import LatentDiffusionPrepareBatch

    torch.manual_seed(0)
    bundle = load_bundle_model(ROOT / "bundles" / "brain_mri_ldm", device=device)
    model, size = bundle["network"].train(), bundle["parser"]["image_size"]
    model.autoencoder.requires_grad_(False)
    data = [{"image": torch.rand(1, *size), "age": 60.0 + i, "sex": float(i % 2), "stage": i / num_images}
            for i in range(num_images)]
    loader = DataLoader(Dataset(data), batch_size=batch, shuffle=True)
    prep = LatentDiffusionPrepareBatch(model, bundle["scheduler"], ["age", "sex", "stage"], 0.15,
                                       latent_cache_size=cache_size)
    opt = torch.optim.AdamW(model.diffusion_parameters(), 1e-4)
    trainer = SupervisedTrainer(torch.device(device), epochs, loader, model, opt, torch.nn.MSELoss(), prepare_batch=prep,
                                inferer=SimpleInferer(), decollate=False)
    times: dict[int, list[float]] = {}
    start = [0.0]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: (sync(), start.__setitem__(0, time.perf_counter())))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: (sync(), times.setdefault(e.state.epoch, []).append(
        time.perf_counter() - start[0])))
    t0 = time.perf_counter()
    trainer.run()
    later = [t for ep, ts in times.items() if ep > 1 for t in ts]
    return {"first_epoch": statistics.median(times[1]), "later_epochs": statistics.median(later),
            "total": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latent_cache.md"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _harness import header, interleaved, load_average, median_min_flag

    num_images, epochs = (8, 2) if args.quick else (16, 3)
    before = load_average()
    cases = {name: (lambda size=size: run_case(size, num_images, args.batch, epochs, args.device))
             for name, size in (("encode every batch (baseline)", 0), ("latent cache (ours)", 1024))}
    runs = interleaved(cases, args.repeats, log=lambda msg: print(f"  {msg[:120]}", file=sys.stderr))
    lines = header(f"Latent cache: brain_mri_ldm diffusion training, {num_images} volumes 64x80x64, batch {args.batch}, "
                   f"{epochs} epochs per run", args.repeats, before, args.device)
    lines += ["| case | s / iteration, epoch 1 (median) | s / iteration, later epochs (median / min) | total s (median) "
              "| speed-up, later epochs | note |", "|---|---|---|---|---|---|"]
    base = statistics.median(r["later_epochs"] for r in runs["encode every batch (baseline)"])
    for name, rows in runs.items():
        med, low, flag = median_min_flag([r["later_epochs"] for r in rows])
        lines.append(f"| {name} | {statistics.median(r['first_epoch'] for r in rows):.2f} | {med:.2f} / {low:.2f} | "
                     f"{statistics.median(r['total'] for r in rows):.1f} | {base / med:.1f}x | {flag} |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
