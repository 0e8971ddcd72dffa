"""The ``monai-pie`` command line.

    monai-pie version
    monai-pie synth brain OUTPUT_DIR [--num_subjects 40] [--seed 0] ...
    monai-pie synth tau OUTPUT_DIR [--num_subjects 120] [--num_preclinical 60] [--seed 0] ...
    monai-pie synth cxr OUTPUT_DIR [--num_images 200] [--size 128] [--seed 0] ...
    monai-pie synth generalist OUTPUT_DIR [--num_cxr 800] [--num_brain_subjects 60] [--size 64]
    monai-pie validate brain COHORT_DIR --stage tune|evaluate|generation [--num_subjects 20] [--model_path ...]
    monai-pie validate cxr COHORT_DIR --stage tune|evaluate|generation [--num_subjects 32] [--model_path ...]
    monai-pie validate tau COHORT_DIR --stage tune|evaluate [--model_path ...]
    monai-pie label app [--output_dir DIR]          # write the MONAI Label app folder, print its path
    monai-pie label serve STUDIES [--port 8000] [--host 127.0.0.1] [--tasks a,b] [--device cpu]
    monai-pie slicer modules OUTPUT_DIR [--tasks a,b]   # 3D Slicer CLI modules (add OUTPUT_DIR to Slicer)
    monai-pie schema            # path of the offline bundle-metadata schema
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


class Synth:
    """Synthesise cohorts with known ground truth (see docs/data_*.md)."""

    def brain(self, output_dir: str, **kwargs: Any) -> str:
        """Brain T1 cohort with atrophy (MNI152 2 mm); keyword options as in ``synthesize_brain_cohort``."""
        from monai_pie.data.synthetic.brain import synthesize_brain_cohort

        return json.dumps(synthesize_brain_cohort(output_dir, **kwargs), indent=2, default=str)

    def tau(self, output_dir: str, **kwargs: Any) -> str:
        """Tau-PET SUVR cohort with Braak-like spread and off-target binding (2.5 mm model grid); keyword options as
        in ``synthesize_tau_cohort``."""
        from monai_pie.data.synthetic.tau import synthesize_tau_cohort

        return json.dumps(synthesize_tau_cohort(output_dir, **kwargs), indent=2, default=str)

    def cxr(self, output_dir: str, **kwargs: Any) -> str:
        """Chest X-ray phantom cohort with findings; keyword options as in ``synthesize_cxr_cohort``."""
        from monai_pie.data.synthetic.cxr import synthesize_cxr_cohort

        return json.dumps(synthesize_cxr_cohort(output_dir, **kwargs), indent=2, default=str)

    def generalist(self, output_dir: str, **kwargs: Any) -> str:
        """CXR phantoms + brain MRI slices with one merged datalist (MediSyn generalist training); options as in
        ``synthesize_generalist_cohort``."""
        from monai_pie.data.synthetic.generalist import synthesize_generalist_cohort

        return json.dumps(synthesize_generalist_cohort(output_dir, **kwargs), indent=2, default=str)


class Validate:
    """Validation reports on cohorts with known ground truth (written under <output_dir>/validation/)."""

    def brain(self, cohort_dir: str, stage: str = "evaluate", **kwargs: Any) -> str:
        """Brain progression on a tuning then an evaluation split (``--stage tune`` freezes the settings, ``--stage
        evaluate`` reports on fresh subjects; options as in ``tune_brain`` / ``evaluate_brain``), or the generation
        checks of the LDM bundle (``--stage generation``, options as in ``validate_brain``)."""
        from monai_pie.validation import brain, brain_protocol

        stages = {"tune": brain_protocol.tune_brain, "evaluate": brain_protocol.evaluate_brain,
                  "generation": brain.validate_brain}
        if stage not in stages:
            raise ValueError(f"`--stage` must be one of {sorted(stages)}, got {stage!r}.")
        return json.dumps(stages[stage](cohort_dir, **kwargs), indent=2, default=str)

    def tau(self, cohort_dir: str, stage: str = "evaluate", **kwargs: Any) -> str:
        """Tau PET anomaly detection on the synthetic tau cohort: ``--stage tune`` picks the start level on the
        validation split and freezes it; ``--stage evaluate`` scores TauAD, L_H and the Z-score map on the test split
        and the preclinical cohort (options as in ``tune_tau`` / ``evaluate_tau``)."""
        from monai_pie.validation import tau

        stages = {"tune": tau.tune_tau, "evaluate": tau.evaluate_tau}
        if stage not in stages:
            raise ValueError(f"`--stage` must be one of {sorted(stages)}, got {stage!r}.")
        return json.dumps(stages[stage](cohort_dir, **kwargs), indent=2, default=str)

    def cxr(self, cohort_dir: str, stage: str = "evaluate", **kwargs: Any) -> str:
        """CXR progression on a tuning then an evaluation split (``--stage tune`` freezes the settings, ``--stage
        evaluate`` reports on fresh phantoms; options as in ``tune_cxr`` / ``evaluate_cxr``), or the generation and
        utility checks of the text-guided LDM (``--stage generation``, options as in ``validate_cxr``)."""
        from monai_pie.validation import cxr, cxr_protocol

        stages = {"tune": cxr_protocol.tune_cxr, "evaluate": cxr_protocol.evaluate_cxr,
                  "generation": cxr.validate_cxr}
        if stage not in stages:
            raise ValueError(f"`--stage` must be one of {sorted(stages)}, got {stage!r}.")
        return json.dumps(stages[stage](cohort_dir, **kwargs), indent=2, default=str)


def _names(tasks: str | Sequence[str] | None) -> list[str] | None:
    """``--tasks a,b`` (fire passes a comma list as a tuple) as checked task names."""
    if not tasks:
        return None
    from monai_pie.serving import get_task

    parts = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    return [get_task(str(t).strip()).name for t in parts if str(t).strip()]


class Label:
    """MONAI Label: the monai-pie app (needs ``pip install -e .[label]``, see docs/slicer_and_monailabel.md)."""

    def app(self, output_dir: str | None = None) -> str:
        """Write the app folder (its ``main.py`` imports the app from the package) and print its path. MONAI Label
        creates ``model/ lib/ logs/ bin/`` in it, so it lives outside the package: default
        ``~/.monai-pie/label_app``."""
        from pathlib import Path

        from monai_pie.serving import app_source

        out = Path(output_dir).expanduser() if output_dir else Path.home() / ".monai-pie" / "label_app"
        out.mkdir(parents=True, exist_ok=True)
        (out / "main.py").write_text(app_source().read_text())
        return str(out)

    def serve(self, studies: str, port: int = 8000, host: str = "127.0.0.1", tasks: str | Sequence[str] | None = None,
              device: str | None = None, app_dir: str | None = None, compile_denoiser: bool = False) -> None:
        """Start ``monailabel start_server`` with the app on ``host:port`` (local only by default) over the
        ``studies`` folder; ``--tasks`` limits the served tasks, ``--device`` picks where models run,
        ``--compile_denoiser`` runs denoisers through ``torch.compile`` where a bundle has that switch (the first
        request of a task compiles; later ones are faster)."""
        import shutil
        import subprocess

        if shutil.which("monailabel") is None:
            raise FileNotFoundError("`monailabel` is not installed: pip install -c constraints.txt -e '.[label]' "
                                    "&& pip install -c constraints.txt --no-deps monailabel pydicom-seg")
        command = ["monailabel", "start_server", "--app", self.app(app_dir), "--studies", studies, "--host", host,
                   "--port", str(port)]
        for key, value in (("tasks", ",".join(_names(tasks) or [])), ("device", device),
                           ("compile_denoiser", "true" if compile_denoiser else None)):
            if value:
                command += ["--conf", key, str(value)]
        sys.exit(subprocess.call(command))


class Slicer:
    """3D Slicer CLI modules for every task."""

    def modules(self, output_dir: str, tasks: str | Sequence[str] | None = None) -> str:
        """Write ``MONAIPIE<Task>.xml`` + ``.py`` per task into ``output_dir``; add that folder in Slicer (Edit >
        Application Settings > Modules > Additional module paths) and restart Slicer."""
        from monai_pie.serving.slicer import write_modules

        return "\n".join(str(p) for p in write_modules(output_dir, _names(tasks)))


class Cli:
    """monai-pie: generative medical imaging on MONAI."""

    def __init__(self) -> None:
        self.synth = Synth()
        self.validate = Validate()
        self.label = Label()
        self.slicer = Slicer()

    def version(self) -> str:
        """Package, MONAI and torch versions."""
        import monai
        import torch

        import monai_pie

        return f"monai-pie {monai_pie.__version__} (monai {monai.__version__}, torch {torch.__version__})"

    def schema(self) -> str:
        """Path of the bundle-metadata JSON schema for offline ``verify_metadata --filepath``."""
        from monai_pie.bundle_tools import metadata_schema_path

        return str(metadata_schema_path())


def main(argv: list[str] | None = None) -> None:
    import fire

    try:
        fire.Fire(Cli, command=argv if argv is not None else sys.argv[1:], name="monai-pie")
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # user errors: one clear line, no traceback
        print(f"monai-pie: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
