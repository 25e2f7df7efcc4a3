"""How long ``fedseg site infer`` takes on a 2D picture, against the model's own time.

The issue's bound: the command may take at most 2x the model's time plus 2 s. This runs the
command as a clinician does (a fresh process: imports, model load, reading, prediction,
writing the mask and the picture) and, in this process, times the model on the prepared
picture (``predict_scores``: resize or sliding windows, the network, the scores back). CPU
seconds (user + system) are reported beside wall seconds: on a shared, loaded machine only the
CPU figures compare.

Usage::

    python -m benchmarks.infer_picture_bench --work-dir WORK --picture slice.png \
        [--runs 3] [--report benchmarks/results/infer_picture.md]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def command_times(work: Path, picture: Path, runs: int) -> list[tuple[float, float]]:
    """(wall, cpu) seconds of ``fedseg site infer PICTURE -o mask.png --png overlay.png``."""
    fedseg = Path(sys.executable).with_name("fedseg")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            args = [str(fedseg), "site", "infer", str(picture), "-o", f"{tmp}/m.png"]
            args += ["--png", f"{tmp}/p.png", "--work-dir", str(work)]
            c0, t0 = _cpu_children(), time.perf_counter()
            subprocess.run(args, check=True, capture_output=True)
            out.append((time.perf_counter() - t0, _cpu_children() - c0))
    return out


def model_times(work: Path, picture: Path, runs: int) -> list[tuple[float, float]]:
    """(wall, cpu) seconds of the model on the prepared picture; the first call included."""
    from site_agent.clinic.models import load_model
    from site_agent.clinic.picture_scan import prepare_picture
    from site_agent.federation.workdir import WorkDir
    from site_agent.training.prediction import predict_scores

    model, spec = load_model(WorkDir(work), "global", plain=True)
    image, _ = prepare_picture(picture, spec)
    out = []
    for _ in range(runs):
        c0, t0 = _cpu_self(), time.perf_counter()
        predict_scores(model, spec, image, sliced=False)
        out.append((time.perf_counter() - t0, _cpu_self() - c0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--picture", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    command = command_times(args.work_dir, args.picture, args.runs)
    model = model_times(args.work_dir, args.picture, args.runs + 1)
    cmd_wall = statistics.median(w for w, _ in command)
    cmd_cpu = statistics.median(c for _, c in command)
    first_wall, first_cpu = model[0]
    warm_wall = statistics.median(w for w, _ in model[1:])
    warm_cpu = statistics.median(c for _, c in model[1:])
    lines = [
        f"picture: {args.picture.name}; runs: {args.runs}",
        f"command (median): wall {cmd_wall:.2f} s, cpu {cmd_cpu:.2f} s; "
        f"all: {', '.join(f'{w:.2f}/{c:.2f}' for w, c in command)} (wall/cpu)",
        f"model first call: wall {first_wall:.2f} s, cpu {first_cpu:.2f} s; "
        f"warm (median): wall {warm_wall:.2f} s, cpu {warm_cpu:.2f} s",
        f"bound 2 x first call + 2 s: wall {2 * first_wall + 2:.2f} s, cpu {2 * first_cpu + 2:.2f} s"
        f" -> cpu {'met' if cmd_cpu <= 2 * first_cpu + 2 else 'NOT met'}, "
        f"wall {'met' if cmd_wall <= 2 * first_wall + 2 else 'NOT met'}",
        f"bound 2 x warm call + 2 s: cpu {2 * warm_cpu + 2:.2f} s -> "
        f"{'met' if cmd_cpu <= 2 * warm_cpu + 2 else 'NOT met'}",
    ]
    print("\n".join(lines))
    if args.report is not None:
        args.report.write_text("\n".join(f"- {line}" for line in lines) + "\n")


if __name__ == "__main__":
    main()
