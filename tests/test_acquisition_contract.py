"""The dataset-to-model contract: models are built for an `Acquisition`, checkpoints keep it, and
training, evaluate and export refuse a checkpoint used on data of another acquisition (one line)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import test_hardening
from test_hardening import copy_run, fails_cleanly, invoke

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.checkpoints import build_from_entry, check_fits_data, init_weights, load_model
from sftkd_cli.config import dump_recipe, load_recipe
from sftkd_cli.data.dataset import dataset_acquisition, dataset_record, load_manifest, record_acquisition
from sftkd_cli.errors import SftkdError
from sftkd_cli.models import FAMILIES, build_model, family_of
from sftkd_cli.runs import load_checkpoint
from sftkd_cli.training.objectives import model_record

CENTRED = Acquisition(kspace_layout="centered")
trained_run = test_hardening.trained_run  # the fixture: a finished tiny D2C2 run (read-only)


def _dataset_with(tiny_dataset: Path, tmp_path: Path, **acquisition) -> Path:
    """A copy of the tiny dataset whose manifest records another acquisition (the h5 files unchanged)."""
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "other-data"))
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["acquisition"] = {**Acquisition(image_size=(16, 16)).record(), **acquisition}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def _record(**changes) -> dict:
    """A dataset record (`dataset_record`'s form) of the tiny dataset's acquisition with `changes`."""
    acquisition = dataclasses.replace(Acquisition(image_size=(16, 16)), **changes)
    return {"path": "data", "task": acquisition.task, "acceleration": 4.0, "image_size": [16, 16],
            "kspace_layout": acquisition.kspace_layout, "acquisition": acquisition.record()}


# ----------------------------------------------------------------------------- building for an acquisition


def test_models_are_built_for_an_acquisition_and_record_it():
    assert build_model("D2C2").acquisition == Acquisition() and not build_model("D2C2").dc.centered
    for name in ("D2C2", "U2C1"):
        model = build_model(name, 4, acquisition=CENTRED)
        assert model.dc.centered and model.acquisition == CENTRED
        assert model.record()["centered"] is True and model.record()["acquisition"] == CENTRED.record()
    vdsr = build_model("VDSR4", 4, acquisition=Acquisition(task="sr"))
    assert vdsr.record()["acquisition"]["task"] == "sr" and vdsr.record()["centered"] is False


@pytest.mark.parametrize("values, channels", [("complex", 2), ("magnitude", 2)])
def test_a_family_refuses_images_it_does_not_reconstruct(values, channels):
    # issue 16: the data-consistent families (DnCm, DC-UNet) reconstruct complex two-channel images
    refusing = [family for family in FAMILIES if (values, channels) not in family.accepts]
    assert [f.example for f in refusing] == (["VDSR12"] if values == "complex" else [f.example for f in FAMILIES])
    for family in refusing:
        with pytest.raises(SftkdError, match=f"{channels}-channel {values}"):
            build_model(family.example, acquisition=Acquisition(values=values, channels=channels))


def test_vdsr_is_built_for_super_resolution_only(tiny_dataset, tmp_path):
    # VDSR was trained on recon data, and its model card then called the zero-filled input a
    # low-resolution image: the family declares its task, the builder refuses other data
    assert [f.tasks for f in FAMILIES] == [("recon", "sr"), ("sr",), ("recon", "sr")]  # D, VDSR, U
    assert build_model("VDSR4", 4).acquisition.task == "sr" and build_model("D2C2").acquisition.task == "recon"
    with pytest.raises(SftkdError, match=r"^model VDSR4: built for task sr only, but the data is prepared for task recon"):
        build_model("VDSR4", 4, acquisition=Acquisition(task="recon"))
    fails_cleanly("train-teacher", "--model", "VDSR4", "--data", tiny_dataset, "--runs-dir", tmp_path, "--name", "v",
                  "--epochs", "1", "--threads", "1", "model.channels=4", names=("VDSR4", "task sr only", "task recon"))
    assert not (tmp_path / "v").exists()


def test_every_family_has_its_export_hooks():
    for family in FAMILIES:
        model = build_model(family.example, 4)
        assert family_of(model.name) is family
        assert family.architecture(model, True)["name"] == model.name
        wrapper = family.exportable(model, (12, 10), False)
        zf, kspace, mask = torch.rand(1, 1, 12, 10), torch.zeros(1, 2, 12, 10), torch.zeros(1, 1, 12, 10)
        with torch.no_grad():
            assert wrapper(zf, kspace, mask).shape == (1, 1, 12, 10)
    assert [f.data_consistency for f in FAMILIES] == [True, False, True]  # D, VDSR, U


def test_old_checkpoint_entries_rebuild_with_the_runs_dataset_record():
    model = build_model("D2C2", 4, acquisition=CENTRED)
    entry = model_record(model)
    del entry["acquisition"]  # an entry written before the acquisition record
    rebuilt = build_from_entry(entry, "old.pt", {"task": "recon", "kspace_layout": "centered", "image_size": [16, 16]})
    assert rebuilt.dc.centered and rebuilt.acquisition == Acquisition(kspace_layout="centered", image_size=(16, 16))
    assert build_from_entry(entry).acquisition == CENTRED  # no trained_on either: the paper's data, its own layout
    vdsr = model_record(build_model("VDSR4", 4))
    del vdsr["acquisition"]  # VDSR entries always said centered=False: the layout is the dataset's
    sr = {"task": "sr", "kspace_layout": "centered", "image_size": [16, 16]}
    assert build_from_entry(vdsr, "old.pt", sr).acquisition == Acquisition("sr", "centered", image_size=(16, 16))


def test_an_old_checkpoint_still_loads_and_evaluates(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    for name in ("best", "last"):
        path = run / "checkpoints" / f"{name}.pt"
        state = load_checkpoint(path)
        for entry in state["models"].values():
            del entry["acquisition"]
        del state["trained_on"]["acquisition"]
        torch.save(state, path)
    model, _ = load_model(run)
    assert model.acquisition == Acquisition(image_size=(16, 16))
    assert invoke("evaluate", run, "--device", "cpu", "--no-recon").exit_code == 0


# ----------------------------------------------------------------------------- the dataset's acquisition


def test_the_dataset_acquisition_comes_from_the_manifest_or_its_older_keys(tiny_dataset, tmp_path):
    manifest = load_manifest(tiny_dataset)
    old = {k: v for k, v in manifest.items() if k != "acquisition"}
    assert dataset_acquisition(old) == Acquisition(image_size=(16, 16))
    old["mask"] = {**old["mask"], "layout": "centered"}
    assert dataset_acquisition(old).kspace_layout == "centered"
    data = _dataset_with(tiny_dataset, tmp_path, values="complex", channels=2, image_size=None)
    assert dataset_acquisition(load_manifest(data)) == Acquisition(values="complex", channels=2, image_size=(16, 16))
    record = dataset_record(data, 4)
    assert record["acquisition"]["values"] == "complex" and record_acquisition(record).channels == 2
    assert record_acquisition({"task": "sr", "kspace_layout": "centered"}) == Acquisition("sr", "centered")


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("change, named", [
    ({"task": "sr"}, ("task recon", "task sr")),
    ({"values": "complex", "channels": 2}, ("image values magnitude", "complex")),
    ({"channels": 3}, ("image channels 1", "image channels 3")),
    ({"kspace_layout": "centered"}, ("corner k-space", "centered k-space")),
])
def test_a_checkpoint_on_data_of_another_acquisition_is_refused(change, named):
    entry = build_model("D2C2", 4, acquisition=Acquisition(image_size=(16, 16))).record()
    check_fits_data({}, entry, _record(), "run.pt", same_acquisition=False)
    with pytest.raises(SftkdError) as caught:
        check_fits_data({}, entry, _record(**change), "run.pt", same_acquisition=False)
    assert str(caught.value).startswith("run.pt: ") and "\n" not in str(caught.value)
    for name in named:
        assert name in str(caught.value)


def test_size_and_acceleration_only_bind_a_kd_teacher_and_layout_only_a_dc_model():
    entry = build_model("D2C2", 4, acquisition=Acquisition(image_size=(16, 16))).record()
    state = {"trained_on": {"acceleration": 4.0}}
    other = {**_record(image_size=(20, 20)), "acceleration": 5.0}
    check_fits_data(state, entry, other, "t.pt", same_acquisition=False)
    with pytest.raises(SftkdError, match="trained with acceleration 4x, but this run uses 5x"):
        check_fits_data(state, entry, other, "t.pt", same_acquisition=True)
    with pytest.raises(SftkdError, match="trained with image size 16x16, but this run uses 20x20"):
        check_fits_data(state, entry, {**other, "acceleration": 4.0}, "t.pt", same_acquisition=True)
    vdsr = build_model("VDSR4", 4, acquisition=Acquisition(task="sr")).record()  # no DC: the layout does not matter
    check_fits_data({}, vdsr, _record(task="sr", kspace_layout="centered"), "v.pt", same_acquisition=True)


def test_init_weights_refuses_a_checkpoint_of_other_data(trained_run):
    init_weights(build_model("D2C2"), trained_run)  # the run's own 32-channel D2C2
    with pytest.raises(SftkdError, match="corner k-space"):
        init_weights(build_model("D2C2", acquisition=CENTRED), trained_run)


def test_evaluate_refuses_a_dataset_of_another_acquisition(trained_run, tiny_dataset, tmp_path):
    data = _dataset_with(tiny_dataset, tmp_path, values="complex", channels=2)
    fails_cleanly("evaluate", trained_run, "--data", data, "--device", "cpu", "--no-recon",
                  names=(str(trained_run), "image values magnitude", "complex"))


def test_export_refuses_a_run_whose_dataset_holds_other_data(trained_run, tiny_dataset, tmp_path):
    run = copy_run(trained_run, tmp_path)
    data = _dataset_with(tiny_dataset, tmp_path, task="sr")
    recipe = load_recipe(run / "recipe.yaml")
    (run / "recipe.yaml").write_text(dump_recipe(dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path=str(data)))))
    fails_cleanly("export", run, "--format", "torchscript", names=(str(run), "task recon", "task sr"))
    assert not (run / "export").exists() or not any((run / "export").iterdir())
