"""Every bundle conforms to MONAI's bundle specification and model-zoo's checks, offline: metadata against our schema
and model-zoo's, the workflow properties of inference and training, the files model-zoo asks for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers.bundle_helpers import ALL_BUNDLES, BRAIN_PROG
from monai.bundle import ConfigParser, ConfigWorkflow

from monai_pie.bundle_tools import metadata_schema_path, model_zoo_schema_path

IDS = [b.name for b in ALL_BUNDLES]
TRAINING = [(b, s) for b in ALL_BUNDLES for s in ("autoencoder", "diffusion") if (b / "configs" / f"train_{s}.json").is_file()]


@pytest.mark.parametrize("bundle", ALL_BUNDLES, ids=IDS)
def test_metadata_verifies_offline_against_both_schemas(bundle):
    from monai.bundle import verify_metadata

    for schema in (metadata_schema_path(), model_zoo_schema_path()):
        verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))  # raises if not


def test_the_verify_command_never_downloads_the_schema():
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
           str(BRAIN_PROG / "configs" / "metadata.json"), "--filepath", str(model_zoo_schema_path())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "metadata is verified with no error" in log and "skipped downloading" in log


@pytest.mark.parametrize("bundle", ALL_BUNDLES, ids=IDS)
def test_model_zoo_file_and_metadata_requirements(bundle):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert meta["name"] and meta["name"] != bundle.name  # a display name
    assert meta["eval_metrics"] and meta["image_classes"]
    assert "optional_packages_version" not in meta  # deprecated in MONAI 1.6
    for f in ("LICENSE", "configs/metadata.json", "configs/inference.json", "configs/logging.conf", "models/model.pt",
              "docs/README.md", "docs/data_license.txt"):
        assert (bundle / f).is_file(), f
    readme = (bundle / "docs" / "README.md").read_text()
    assert "TorchScript export is not supported" in readme
    assert set(torch.load(bundle / "models" / "model.pt", weights_only=True))  # a plain state_dict


@pytest.mark.parametrize("bundle", ALL_BUNDLES, ids=IDS)
def test_inference_workflow_has_every_property_and_the_usual_shape(bundle):
    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"),
                        meta_file=str(bundle / "configs" / "metadata.json"),
                        logging_file=str(bundle / "configs" / "logging.conf"), workflow_type="inference",
                        bundle_root=str(bundle))
    wf.initialize()
    assert wf.check_properties() == []
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    for key in ("datalist", "preprocessing", "dataset", "dataloader", "network_def", "network", "noise_scheduler",
                "inferer", "postprocessing", "handlers", "evaluator"):
        assert key in config, key
    assert config["run"] == ["$@evaluator.run()"]
    assert config["dataset"]["transform"] == "@preprocessing" and config["evaluator"]["postprocessing"] == "@postprocessing"
    assert config["evaluator"]["inferer"] == "@inferer" and config["evaluator"]["val_handlers"] == "@handlers"
    assert isinstance(config["inferer"], dict) and isinstance(config["dataloader"], dict)  # Slicer sets keys in them


@pytest.mark.parametrize(("bundle", "stage"), TRAINING, ids=[f"{b.name}-{s}" for b, s in TRAINING])
def test_training_workflow_has_every_property(bundle, stage, request):
    fixture = "brain_cohort" if bundle.name.startswith("brain") else "tau_cohort" if bundle.name.startswith("tau") \
        else "generalist"
    data = request.getfixturevalue(fixture)
    wf = ConfigWorkflow(config_file=[str(bundle / "configs" / "inference.json"),
                                     str(bundle / "configs" / f"train_{stage}.json")],
                        meta_file=str(bundle / "configs" / "metadata.json"),
                        logging_file=str(bundle / "configs" / "logging.conf"), workflow_type="train",
                        bundle_root=str(bundle), dataset_dir=str(data))
    wf.initialize()
    assert wf.check_properties() == []  # including train#inferer, and the optional ones referenced by their ids
    assert wf.train_inferer is not None and wf.train_preprocessing is not None and wf.val_key_metric is not None


@pytest.mark.parametrize("bundle", [b for b in ALL_BUNDLES if (b / "configs" / "multi_gpu_inference.json").is_file()]
                         + [BRAIN_PROG], ids=lambda b: b.name)
def test_progression_bundles_have_a_multi_gpu_inference_override(bundle):
    override = json.loads((bundle / "configs" / "multi_gpu_inference.json").read_text())
    assert override["dataloader#sampler"] == "@sampler" and override["sampler"]["_target_"] == "DistributedSampler"
    assert override["sampler"]["even_divisible"] is False  # every image once


def test_schema_accepts_valid_and_rejects_incomplete_metadata(tmp_path):
    from monai.bundle import verify_metadata

    meta = json.loads((BRAIN_PROG / "configs" / "metadata.json").read_text())
    (tmp_path / "good.json").write_text(json.dumps(meta))
    verify_metadata(meta_file=str(tmp_path / "good.json"), filepath=str(metadata_schema_path()))
    for missing in ("eval_metrics", "image_classes", "name"):
        bad = {k: v for k, v in meta.items() if k != missing}
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=missing):
            verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(metadata_schema_path()))


def test_components_resolve_by_short_name_in_a_config():
    config = {
        "imports": ["$import monai_pie"],
        "scheduler": {"_target_": "DDIMScheduler", "num_train_timesteps": 1000, "clip_sample": False},
        "inferer": {"_target_": "ProgressionInferer", "scheduler": "@scheduler", "num_rounds": 3, "strength": 0.4,
                    "progress": False},
        "generator": {"_target_": "GenerationInferer", "scheduler": "@scheduler", "image_size": [8, 8]},
        "model": {"_target_": "LatentDiffusionModel", "unet": {"_target_": "torch.nn.Identity"}},
    }
    parser = ConfigParser(config)
    from monai_pie import GenerationInferer, ProgressionInferer

    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, ProgressionInferer) and inferer.num_rounds == 3 and inferer.levels[0] == 399
    assert isinstance(parser.get_parsed_content("generator"), GenerationInferer)
    assert isinstance(parser.get_parsed_content("model"), torch.nn.Module)


@pytest.mark.parametrize("bundle", ALL_BUNDLES, ids=IDS)
def test_every_bundle_can_compile_its_denoiser(bundle):
    """``--compile_denoiser true`` reaches the sampler of every bundle's inferer (off by default)."""
    from monai_pie.bundle_tools import parse_bundle

    for value in (False, True):
        parser = parse_bundle(bundle, {"compile_denoiser": value})
        assert parser.get_parsed_content("inferer").sampler.compile_denoiser is value
    assert parse_bundle(bundle).get_parsed_content("compile_denoiser") is False
