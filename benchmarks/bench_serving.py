"""MONAI Label serving latency on this machine: server start-up (to the first ``/info/`` answer) and per-task request
latency over HTTP, with tiny settings and with the bundle defaults.

Cases run round-robin (every task once per repeat, tiny before defaults) so machine load spreads over all of them;
the table reports median and min over repeats, the load average before and after, and flags rows whose repeats
spread by more than 25 % of the median.

    python benchmarks/bench_serving.py [--repeats 3] [--default_repeats 1] [--output benchmarks/results/serving.md]
    python benchmarks/bench_serving.py --compiled [--default_repeats 3]   # -> benchmarks/results/serving_compiled.md

``--compiled`` instead serves the tasks twice, from a plain server and from one started with ``--conf
compile_denoiser true``: each task's first request to the compiled server (which compiles) is timed on its own,
then requests with the bundle defaults alternate between the two servers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {"brain_progression": {"num_inference_steps": 3, "num_rounds": 1},
        "brain_generation": {"num_inference_steps": 3},
        "cxr_text_to_image": {"num_inference_steps": 3},
        "cxr_progression": {"num_inference_steps": 3, "num_rounds": 1}}
IMAGES = {"brain_progression": "t1", "brain_generation": "t1", "cxr_text_to_image": "cxr", "cxr_progression": "cxr"}

def request(url: str, task: str, params: dict) -> float:
    body = f"--b\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n--b--\r\n".encode()
    req = urllib.request.Request(f"{url}/infer/{task}?image={IMAGES[task]}&output=json", data=body, method="POST",
                                 headers={"Content-Type": "multipart/form-data; boundary=b"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=3600) as r:
        r.read()
    return time.perf_counter() - start


def row(name: str, times: list[float]) -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from _harness import median_min_flag

    med, low, flag = median_min_flag(times)
    return f"| {name} | {len(times)} | {med:.2f} | {low:.2f} | {flag} |"


def compiled_table(app: str, studies: Path, env: dict[str, str], repeats: int) -> list[str]:
    """Rows of the compiled-server comparison (see the module docstring)."""
    from monai_pie.serving.server import start_local_server

    plain = start_local_server(app, studies, env=env)
    compiled = start_local_server(app, studies, env=env, conf={"compile_denoiser": "true"})
    first: dict[str, float] = {}
    times: dict[tuple[str, str], list[float]] = {(t, k): [] for t in TINY for k in ("plain", "compiled")}
    try:
        for task in TINY:
            request(plain.url, task, {})  # warm-up, excluded
            first[task] = request(compiled.url, task, {})  # compiles
            print(f"{task}: compiled server's first request {first[task]:.1f} s", flush=True)
        for _ in range(repeats):
            for task in TINY:
                times[(task, "plain")].append(request(plain.url, task, {}))
                times[(task, "compiled")].append(request(compiled.url, task, {}))
    finally:
        plain.stop()
        compiled.stop()
    lines = ["| task (bundle defaults) | plain server, median / min s | compiled server, median / min s | speed-up | "
             "compiled server's first request s | requests to break even | note |", "|---|---|---|---|---|---|---|"]
    sys.path.insert(0, str(Path(__file__).parent))
    from _harness import median_min_flag

    for task in TINY:
        (pm, pl, pf), (cm, cl, cf) = median_min_flag(times[(task, "plain")]), median_min_flag(times[(task, "compiled")])
        saved = pm - cm
        even = f"{max(first[task] - cm, 0.0) / saved:.0f}" if saved > 0 else "never"
        lines.append(f"| {task} | {pm:.2f} / {pl:.2f} | {cm:.2f} / {cl:.2f} | {pm / cm:.2f}x | {first[task]:.1f} | "
                     f"{even} | {' '.join(f for f in (pf, cf) if f)} |")
    return lines


def main() -> None:
    from monai_pie.serving.server import start_local_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--default_repeats", type=int, default=1)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--compiled", action="store_true", help="compare a compiled server with a plain one")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    output = args.output or str(ROOT / "benchmarks" / "results" / ("serving_compiled.md" if args.compiled
                                                                    else "serving.md"))
    work = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    studies = work / "studies"
    studies.mkdir()
    shutil.copy(ROOT / "bundles" / "brain_mri_progression" / "docs" / "example_t1.nii.gz", studies / "t1.nii.gz")
    shutil.copy(ROOT / "bundles" / "cxr_progression" / "docs" / "example_cxr.png", studies / "cxr.png")
    app = subprocess.run([sys.executable, "-m", "monai_pie.apps.cli", "label", "app", "--output_dir",
                          str(work / "app")], capture_output=True, text=True, check=True).stdout.strip()
    env = {"MONAI_LABEL_SESSION_PATH": str(work / "sessions")}
    load_before = os.getloadavg()
    if args.compiled:
        try:
            rows = compiled_table(app, studies, env, args.default_repeats)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        text = "\n".join(["# MONAI Label serving: a compiled server (`--conf compile_denoiser true`) against a plain one",
                          "", f"`python benchmarks/bench_serving.py --compiled --default_repeats {args.default_repeats}`"
                          f" on {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
                          f"torch {__import__('torch').__version__}; {time.strftime('%Y-%m-%d')}; load average "
                          f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after.", "",
                          "Seconds, HTTP request to answer (JSON output), the bundle's own settings; requests alternate "
                          "between the two servers (both up at once). Break-even: requests after which the first "
                          "request's compiling is repaid (from inductor's on-disk cache if an earlier process "
                          "compiled the same shapes).", "", *rows]) + "\n"
        Path(output).write_text(text)
        print(text)
        return
    starts = []
    for _ in range(args.starts):
        server = start_local_server(app, studies, env=env)
        starts.append(server.startup_s)
        server.stop()
    server = start_local_server(app, studies, env=env)
    tiny: dict[str, list[float]] = {t: [] for t in TINY}
    defaults: dict[str, list[float]] = {t: [] for t in TINY}
    try:
        for task in TINY:  # warm-up, excluded
            request(server.url, task, TINY[task])
        for r in range(max(args.repeats, args.default_repeats)):
            for task in TINY:
                if r < args.repeats:
                    tiny[task].append(request(server.url, task, TINY[task]))
                if r < args.default_repeats:
                    defaults[task].append(request(server.url, task, {}))
                    print(f"{task}: defaults {defaults[task][-1]:.1f} s", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    lines = ["# MONAI Label serving latency", "",
             f"`python benchmarks/bench_serving.py --repeats {args.repeats} --default_repeats {args.default_repeats}`"
             f" on {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; torch {__import__('torch').__version__}; "
             f"{time.strftime('%Y-%m-%d')}; load average {load_before[0]:.2f} before, "
             f"{os.getloadavg()[0]:.2f} after.", "",
             "Seconds, HTTP request to answer (JSON output), the model already loaded; tiny = "
             "3 sampler steps (and 1 PIE round); defaults = the bundle's own settings.", "",
             "| case | repeats | median s | min s | note |", "|---|---|---|---|---|",
             row("server start-up (to the first `/info/` answer, 4 tasks loaded)", starts)]
    lines += [row(f"{task}, tiny", tiny[task]) for task in TINY]
    lines += [row(f"{task}, bundle defaults", defaults[task]) for task in TINY if defaults[task]]
    text = "\n".join(lines) + "\n"
    Path(output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
