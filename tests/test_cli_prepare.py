"""`sftkd prepare-data ...` through typer's CliRunner: success paths, the summary, re-runs, and every
bad input ending in one clear line, exit code 2, no traceback and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sftkd_cli.cli.app import app
from sftkd_cli.data.sources import demo as demo_mod

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["prepare-data", *[str(a) for a in args]])


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in result.stdout + result.stderr


def nothing_written(parent: Path, name: str = "out") -> bool:
    return not (parent / name).exists() and not [p for p in parent.iterdir() if ".tmp-" in p.name]


# ----------------------------------------------------------------- success paths


@pytest.mark.nilearn  # the demo template ships in nilearn (optional: sftkd[demo])
def test_demo_summary_rerun_and_force(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = run("demo", "--out", out)
    assert first.exit_code == 0, first.stderr
    text = first.stdout
    for needle in ("demo/icbm152", "96 x 96", "4x: 24/96 lines", "5x: 19/96 lines", "train 8", "val 3", "test 2"):
        assert needle in text, (needle, text)
    assert first.stderr == ""
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["downsample"] == 2 and manifest["options"]["min_slice_mean"] == 0.3

    again = run("demo", "--out", out)
    assert again.exit_code == 0 and "is up to date" in again.stdout
    refused = run("demo", "--out", out, "--acc", "4")
    assert_one_line_error(refused, "prepared differently", "accelerations [4.0, 5.0] -> [4.0]", "--force")
    forced = run("demo", "--out", out, "--acc", "4", "--force")
    assert forced.exit_code == 0 and json.loads((out / "manifest.json").read_text())["accelerations"] == [4.0]


def test_demo_colin27_explicit_template(tmp_path: Path, nifti_writer) -> None:
    ch2 = nifti_writer.write(tmp_path / "ch2.nii.gz", nifti_writer.phantom((30, 36, 24)))
    result = run("demo", "--source", "colin27", "--template", ch2, "--out", tmp_path / "d",
                 "--size", "16", "16", "--slab", "4", "--gap", "1")
    assert result.exit_code == 0, result.stderr
    assert "demo/colin27" in result.stdout
    assert json.loads((tmp_path / "d/manifest.json").read_text())["source"] == "demo/colin27"


def test_the_summary_shows_a_long_or_bracketed_folder_whole(tmp_path: Path, nifti_writer) -> None:
    """The "written to" cell folds a long path over lines instead of cutting it with '…', and
    brackets in it are text, not rich markup."""
    root = nifti_writer.acdc_tree(tmp_path / "ACDC", training=(1, 2, 3), testing=(101,))
    out = tmp_path / ("a_long_folder_name_" * 5) / "data[x]"
    result = run("acdc", root, "--out", out, "--size", "16", "16")
    assert result.exit_code == 0, result.stderr
    cells, inside = [], False
    for line in result.stdout.splitlines():
        parts = [part.strip() for part in line.split("│")]
        if len(parts) == 4:  # │ what │ value │
            inside = parts[1] == "written to" or (inside and parts[1] == "")
            if inside:
                cells.append(parts[2])
    assert "".join(cells) == str(out) and "…" not in result.stdout


def test_acdc_cli(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.acdc_tree(tmp_path / "ACDC", training=(1, 2, 3), testing=(101,))
    result = run("acdc", root, "--out", tmp_path / "out", "--size", "16", "16", "--acc", "4,5")
    assert result.exit_code == 0, result.stderr
    m = json.loads((tmp_path / "out/manifest.json").read_text())
    assert m["splits"]["val"] == ["patient101_frame01", "patient101_frame111"]
    result = run("acdc", root, "--out", tmp_path / "out2", "--size", "16", "16", "--val", "patient002")
    assert result.exit_code == 0, result.stderr
    m = json.loads((tmp_path / "out2/manifest.json").read_text())
    assert m["splits"]["val"] == ["patient002_frame01", "patient002_frame12"]
    assert m["splits"]["test"] == ["patient101_frame01", "patient101_frame111"]


def test_mrbrains_cli(tmp_path: Path, nifti_writer) -> None:
    root = nifti_writer.mrbrains18_tree(tmp_path / "MRBrainS18")
    result = run("mrbrains", root, "--out", tmp_path / "out", "--size", "16", "16",
                 "--modality", "FLAIR", "--val", "070", "--val", "1", "--acc", "4")
    assert result.exit_code == 0, result.stderr
    m = json.loads((tmp_path / "out/manifest.json").read_text())
    assert m["splits"]["val"] == ["070", "1"] and len(m["splits"]["train"]) == 5
    assert m["volumes"]["1"]["source_file"] == "training/1/pre/FLAIR.nii.gz"


def test_nifti_cli_with_mask_files(tmp_path: Path, nifti_writer) -> None:
    for i in range(3):
        nifti_writer.write(tmp_path / f"raw/s{i}/t1.nii", nifti_writer.phantom((20, 18, 3), seed=i))
    mask = np.zeros((20, 18), dtype=np.float32)
    mask[[3, 9, 10, 11]] = 1  # centred: DC is row 20 // 2
    np.save(tmp_path / "m.npy", mask)
    result = run("nifti", tmp_path / "raw", "--pattern", "*.nii", "--out", tmp_path / "out",
                 "--mask-file", f"4={tmp_path / 'm.npy'}", "--mask-layout", "centered", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    m = json.loads((tmp_path / "out/manifest.json").read_text())
    assert m["accelerations"] == [4.0]  # taken from the mask files when --acc is not given
    assert m["image_size"] == [20, 18] and m["mask"]["layout"] == "centered"
    assert m["volumes"]["s0_t1"]["slices"] == 3
    np.testing.assert_array_equal(np.load(tmp_path / "out/masks/acc4.npy"), mask)


def test_a_dataset_without_val_volumes_is_written_with_a_warning(tmp_path: Path, nifti_writer) -> None:
    """CPU: one volume leaves val empty (training would refuse it); prepare-data says so at once."""
    nifti_writer.write(tmp_path / "raw/only.nii.gz", nifti_writer.phantom((20, 18, 3)))
    result = run("nifti", tmp_path / "raw", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "out/manifest.json").read_text())["splits"].get("val", []) == []
    assert "warning:" in result.stderr and "no val volume" in result.stderr and "--val" in result.stderr
    nifti_writer.write(tmp_path / "raw/other.nii.gz", nifti_writer.phantom((20, 18, 3), seed=1))
    result = run("nifti", tmp_path / "raw", "--out", tmp_path / "out2")
    assert result.exit_code == 0 and "warning" not in result.stderr  # two volumes: one is val
    result = run("nifti", tmp_path / "raw", "--out", tmp_path / "out3", "--val-fraction", "0")
    assert result.exit_code == 0 and "warning" not in result.stderr  # no val asked for


# ----------------------------------------------------------------- bad inputs: one line, exit 2, nothing written


@pytest.fixture
def raw(tmp_path: Path, nifti_writer) -> Path:
    nifti_writer.write(tmp_path / "raw/good.nii.gz", nifti_writer.phantom((20, 18, 4)))
    return tmp_path / "raw"


def test_missing_root(tmp_path: Path) -> None:
    for source in ("acdc", "mrbrains", "nifti"):
        result = run(source, tmp_path / "nowhere", "--out", tmp_path / "out")
        assert_one_line_error(result, "nowhere: input folder not found")
    assert nothing_written(tmp_path)


def test_no_matching_files(tmp_path: Path, raw: Path) -> None:
    result = run("nifti", raw, "--pattern", "*.mgz", "--out", tmp_path / "out")
    assert_one_line_error(result, "raw: no files match --pattern '*.mgz'")
    assert_one_line_error(run("acdc", raw, "--out", tmp_path / "out"), "no ACDC image frames found")
    assert_one_line_error(run("mrbrains", raw, "--out", tmp_path / "out"), "no MRBrainS subjects found")
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    "name, data, needle",
    [
        ("cine.nii.gz", np.ones((20, 18, 4, 5), dtype=np.float32), "cine.nii.gz: 4-D image of shape (20, 18, 4, 5)"),
        ("zero.nii.gz", np.zeros((20, 18, 4), dtype=np.float32), "zero.nii.gz: no positive voxel"),
        ("nan.nii.gz", np.where(np.eye(20, 18)[..., None] > 0, np.nan, 1.0).repeat(4, 2).astype(np.float32),
         "nan.nii.gz: 72 NaN/Inf voxel(s)"),
        ("inf.nii.gz", np.full((20, 18, 4), np.inf, dtype=np.float32), "inf.nii.gz: 1440 NaN/Inf"),
    ],
)
def test_bad_volume(tmp_path: Path, raw: Path, nifti_writer, name: str, data: np.ndarray, needle: str) -> None:
    nifti_writer.write(raw / name, data)
    assert_one_line_error(run("nifti", raw, "--out", tmp_path / "out"), needle)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("args, needles", [
    (["--acc", "35"], ["--acc 35 on 20x18 images", "an acceleration of 20.00x, labelled 35x"]),
    (["--acc", "1.01"], ["--acc 1.01 on 20x18 images", "all ones (no undersampling)"]),
    (["--seed", str(2**32), "--mask-kind", "fastmri-random"], ["--seed 4294967296: expected an integer from 0 to 4294967295"]),
])
def test_a_mask_training_would_refuse_is_refused_before_anything_is_written(tmp_path: Path, raw: Path, args, needles) -> None:
    assert_one_line_error(run("nifti", raw, "--out", tmp_path / "out", *args), *needles)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("args, needles", [
    (["--acc", "4", "--center-fraction", "0.5"],
     ["--center-fraction 0.5: its 10 centre lines exceed the 5 of 20 lines sampled at 4x; expected at most 0.2500"]),
    (["--acc", "4", "--center-fraction", "0.5", "--mask-kind", "fastmri-random"],
     ["--center-fraction 0.5: its 10 centre lines reach the 5 lines of 4x over 20"]),
])
def test_a_center_fraction_too_large_names_the_flag_and_the_acceleration(tmp_path: Path, raw: Path, args, needles) -> None:
    assert_one_line_error(run("nifti", raw, "--out", tmp_path / "out", *args), *needles)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("args, needle", [
    (["--acc", "4", "--center-fraction", "0"], "--center-fraction 0.0: gives no centre line of 20 (0 x 20 rounds to 0)"),
    (["--acc", "4", "--center-fraction", "0.02", "--mask-kind", "fastmri"],
     "--center-fraction 0.02: gives no centre line of 20 (0.02 x 20 rounds to 0)"),
    (["--acc", "4", "--center-fraction", "0", "--mask-kind", "fastmri-equispaced"], "--center-fraction 0.0: gives no"),
    (["--acc", "8", "--size", "8", "8", "--mask-kind", "fastmri-random"],
     "--center-fraction 0.04: fastMRI's default at 8x (0.32 / acc) gives no centre line of 8"),
])
def test_a_center_fraction_giving_no_centre_line_names_the_flag_and_the_least_that_works(tmp_path: Path, raw: Path,
                                                                                          args, needle) -> None:
    """A generated mask must sample k-space's centre (DC), as a --mask-file must: a centre fraction
    that rounds to no centre line is refused, naming the least that gives one for that size."""
    least = "expected at least 0.0626" if "--size" in args else "expected at least 0.0251"  # 0.0625 x 8 rounds to 0
    assert_one_line_error(run("nifti", raw, "--out", tmp_path / "out", *args), needle,
                          "so the mask could miss k-space's centre (DC)", least)
    assert nothing_written(tmp_path)


def test_a_mask_file_must_sample_the_dc_line_of_its_layout(tmp_path: Path, raw: Path) -> None:
    """DC is row 0 in the corner layout and row 20 // 2 in the centred one (`make_mask`'s, fftshift's):
    a mask made for the other layout would undersample the wrong rows, and is refused saying so."""
    from sftkd_cli.mri.masks import make_mask

    centred = make_mask("random", (20, 18), 4, layout="centered")
    np.save(tmp_path / "centred.npy", centred)
    result = run("nifti", raw, "--out", tmp_path / "out", "--acc", "4", "--mask-file", f"4={tmp_path / 'centred.npy'}")
    assert_one_line_error(result, "centred.npy: does not sample the DC line of --mask-layout corner (row 0); "
                                  "it samples the centered layout's (row 10): pass --mask-layout centered")
    np.save(tmp_path / "corner.npy", np.fft.ifftshift(centred, axes=0))
    result = run("nifti", raw, "--out", tmp_path / "out", "--acc", "4", "--mask-layout", "centered",
                 "--mask-file", f"4={tmp_path / 'corner.npy'}")
    assert_one_line_error(result, "corner.npy: does not sample the DC line of --mask-layout centered (row 10); "
                                  "it samples the corner layout's (row 0): pass --mask-layout corner")
    neither = np.zeros((20, 18), dtype=np.float32)
    neither[[2, 5, 14, 17]] = 1
    np.save(tmp_path / "neither.npy", neither)
    result = run("nifti", raw, "--out", tmp_path / "out", "--acc", "4", "--mask-file", f"4={tmp_path / 'neither.npy'}")
    assert_one_line_error(result, "neither.npy: does not sample the DC line of --mask-layout corner (row 0), "
                                  "nor the centered layout's (row 10); expected a mask that samples k-space's centre")
    assert nothing_written(tmp_path)
    result = run("nifti", raw, "--out", tmp_path / "out", "--acc", "4", "--mask-layout", "centered",
                 "--mask-file", f"4={tmp_path / 'centred.npy'}")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out/masks/acc4.npy"), centred)


def test_truncated_and_garbage_nifti(tmp_path: Path, raw: Path) -> None:
    good = (raw / "good.nii.gz").read_bytes()
    (raw / "trunc.nii.gz").write_bytes(good[: len(good) // 3])
    assert_one_line_error(run("nifti", raw, "--out", tmp_path / "out"), "trunc.nii.gz: damaged gzip data")
    (raw / "trunc.nii.gz").write_bytes(b"garbage" * 50)
    assert_one_line_error(run("nifti", raw, "--out", tmp_path / "out"), "trunc.nii.gz: cannot read NIfTI")
    assert nothing_written(tmp_path)


def test_mask_shape_mismatch(tmp_path: Path, raw: Path) -> None:
    mask = np.zeros((150, 150), dtype=np.float32)
    mask[::4] = 1
    np.save(tmp_path / "mask.npy", mask)
    result = run("nifti", raw, "--out", tmp_path / "out", "--size", "24", "24", "--acc", "4",
                 "--mask-file", tmp_path / "mask.npy")
    assert_one_line_error(result, "mask.npy: shape (150, 150), expected (24, 24) to match the images")
    result = run("nifti", raw, "--out", tmp_path / "out", "--mask-file", tmp_path / "mask.npy")
    assert_one_line_error(result, "a bare path needs exactly one --acc")
    result = run("nifti", raw, "--out", tmp_path / "out", "--acc", "4", "--mask-file", "5=m.npy")
    assert_one_line_error(result, "acceleration 5 is not among --acc 4")
    (tmp_path / "bad.npy").write_bytes(b"nope")
    result = run("nifti", raw, "--out", tmp_path / "out", "--acc", "4", "--mask-file", tmp_path / "bad.npy")
    assert_one_line_error(result, "bad.npy")
    assert nothing_written(tmp_path)


def test_a_damaged_mat_mask_file_is_one_line(tmp_path: Path, raw: Path) -> None:
    (tmp_path / "bad.mat").write_bytes(b"this is not a mask file at all")
    result = run("nifti", raw, "--out", tmp_path / "out", "--acc", "4", "--mask-file", tmp_path / "bad.mat")
    assert_one_line_error(result, "bad.mat: not a readable MATLAB .mat file (", "); expected a 2-D 0/1 mask")
    assert nothing_written(tmp_path)


def test_out_is_a_file_or_inside_input(tmp_path: Path, raw: Path) -> None:
    (tmp_path / "out").write_text("I am a file")
    assert_one_line_error(run("nifti", raw, "--out", tmp_path / "out"), "out: is a file")
    assert (tmp_path / "out").read_text() == "I am a file"
    assert_one_line_error(run("nifti", raw, "--out", raw / "prep"), "inside the input folder")
    assert not (raw / "prep").exists()


def test_bad_option_values(tmp_path: Path, raw: Path) -> None:
    cases = [
        (["--acc", "four"], "--acc four: expected a number"),
        (["--acc", "0.5"], "--acc 0.5: expected a number > 1"),
        (["--mask-kind", "spiral"], "--mask-kind spiral: expected one of random, equispaced, fastmri"),
        (["--mask-layout", "middle"], "--mask-layout middle"),
        (["--val", "ghost"], "--val ghost: not found"),
        (["--val-fraction", "1.2"], "--val-fraction 1.2"),
        (["--size", "2", "2"], "--size 2 2:"),
    ]
    for extra, needle in cases:
        assert_one_line_error(run("nifti", raw, "--out", tmp_path / "out", *extra), needle)
    assert_one_line_error(run("demo", "--source", "mni", "--out", tmp_path / "out"), "--source mni")
    assert nothing_written(tmp_path)


def test_demo_missing_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_mod, "COLIN27_DIRS", (tmp_path / "share", tmp_path / "lib"))
    result = run("demo", "--source", "colin27", "--out", tmp_path / "out")
    assert_one_line_error(result, "colin27: ch2.nii.gz not found", "mricron-data")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert_one_line_error(run("demo", "--out", tmp_path / "out"), "nilearn package is not installed")
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("size", [("0", "16"), ("16", "5000"), ("6", "16")])
def test_a_size_out_of_range_is_shown_as_typed(tmp_path: Path, size: tuple[str, str]) -> None:
    """'--size 0 16', as the command line reads, not a Python tuple '(0, 16)'. 6 is too small too:
    training refuses images smaller than SSIM's 7 x 7 window, so prepare-data does not make them."""
    result = run("nifti", tmp_path, "--out", tmp_path / "out", "--size", *size)
    assert_one_line_error(result, f"--size {size[0]} {size[1]}: expected two integers H W, each from 7 to 4096")


@pytest.mark.parametrize("args, needles", [
    (["demo", "--val", "x"], ["--val: not used by source demo (it cuts the template into axial slabs and assigns them "
                              "to train, val and test itself); it takes --size, --downsample, --acc,", "--slab, --gap"]),
    (["demo", "--val-fraction", "0.2"], ["--val-fraction: not used by source demo"]),
    (["fastmri", "raw", "--task", "sr"], ["--task: not used by source fastmri (it reads raw k-space", "reconstruction only"]),
])
def test_an_option_the_source_decides_itself_is_refused_naming_the_source(tmp_path: Path, args, needles) -> None:
    """Not click's 'No such option: --val (Possible options: --acc, --gap, --scale)': the source,
    why it does not take the option, and the options it takes."""
    assert_one_line_error(run(*args, "--out", tmp_path / "out"), *needles)
    assert nothing_written(tmp_path)


def test_an_earlier_versions_flag_is_refused_with_its_new_name(tmp_path: Path) -> None:
    """--accelerations (renamed --acc) gets the new name, not click's 'Possible options: --center-fraction'."""
    assert_one_line_error(run("demo", "--accelerations", "4", "--out", tmp_path / "out"), "--accelerations: renamed --acc")
    assert nothing_written(tmp_path)


def test_a_source_that_decides_the_task_offers_no_scale() -> None:
    """fastmri reconstructs only: its --acc has no --scale alias and its help no sr text; demo keeps both."""
    fastmri, demo = run("fastmri", "--help").stdout, run("demo", "--help").stdout
    assert "--scale" not in fastmri and "sr" not in fastmri.split("--acc", 1)[1].split("--mask-kind", 1)[0]
    assert "--scale" in demo
    assert "ACDC: patient" not in fastmri + demo


def test_slices_downsampled_below_the_size_are_zero_padded_with_a_warning(tmp_path: Path, nifti_writer) -> None:
    """--downsample 4 leaves the 36x30 axial slices of this template 9x7: padded to --size 16 16,
    as --size does, and prepare-data says so in one line; 2 (18x15, cropped to 12x12) says nothing."""
    ch2 = nifti_writer.write(tmp_path / "ch2.nii.gz", nifti_writer.phantom((30, 36, 24)))
    demo = ["demo", "--source", "colin27", "--template", ch2, "--slab", "4", "--gap", "1"]
    result = run(*demo, "--out", tmp_path / "small", "--size", "16", "16", "--downsample", "4")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ("warning: --downsample 4: the slices are 9x7 after downsampling, zero-padded to 16x16 "
                             "(--size 16 16)\n")
    assert json.loads((tmp_path / "small/manifest.json").read_text())["image_size"] == [16, 16]
    result = run(*demo, "--out", tmp_path / "cropped", "--size", "12", "12", "--downsample", "2")
    assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_nifti_files_the_default_pattern_leaves_out_are_told_in_one_note(tmp_path: Path, nifti_writer) -> None:
    """The default --pattern '*.nii.gz' is kept (it is in every recorded dataset key), but the .nii
    files it leaves out are counted in one line naming the pattern that takes them; with none
    matching, the error says so."""
    for i in range(3):
        nifti_writer.write(tmp_path / f"raw/s{i}/t1.nii", nifti_writer.phantom((20, 18, 3), seed=i))
    result = run("nifti", tmp_path / "raw", "--out", tmp_path / "none")
    assert_one_line_error(result, "no files match --pattern '*.nii.gz'", "leaves out 3 .nii files", "--pattern '*.nii*'")
    nifti_writer.write(tmp_path / "raw/s3/t1.nii.gz", nifti_writer.phantom((20, 18, 3), seed=3))
    result = run("nifti", tmp_path / "raw", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "leaves out" in line]
    assert notes == [f"prepare-data: --pattern '*.nii.gz' leaves out 3 .nii files under {tmp_path / 'raw'}; "
                     "--pattern '*.nii*' takes those too"], result.stderr
    taken = run("nifti", tmp_path / "raw", "--out", tmp_path / "all", "--pattern", "*.nii*", "--val", "s0_t1")
    assert taken.exit_code == 0 and "leaves out" not in taken.stderr, taken.stderr
    assert len(json.loads((tmp_path / "all/manifest.json").read_text())["volumes"]) == 4


def test_an_up_to_date_dataset_of_a_moved_input_folder_says_where_it_was_prepared(tmp_path: Path, nifti_writer) -> None:
    """The summary's source is the manifest's (where the dataset was prepared from); after ROOT was
    moved, a note says the same files are now at the ROOT given."""
    for i in range(2):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom((20, 18, 3), seed=i))
    assert run("nifti", tmp_path / "raw", "--out", tmp_path / "out").exit_code == 0
    same = run("nifti", tmp_path / "raw", "--out", tmp_path / "out")
    assert same.exit_code == 0 and "is up to date" in same.stdout and "note:" not in same.stdout
    (tmp_path / "raw").rename(tmp_path / "moved")
    moved = run("nifti", tmp_path / "moved", "--out", tmp_path / "out")
    assert moved.exit_code == 0 and "is up to date" in moved.stdout, moved.stderr
    assert (f"note: the dataset records its inputs at {tmp_path / 'raw'}, where it was prepared; the same files are "
            f"now at {tmp_path / 'moved'}") in " ".join(moved.stdout.split())
