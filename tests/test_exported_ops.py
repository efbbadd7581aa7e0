"""The op check of exported TorchScript files: every file `sftkd export` writes passes it, a
crafted file that writes to disk (in forward, a nested block, a hook or while loading) does not."""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from rich.console import Console

import sftkd_cli.exported as exported_module
from cli_helpers import sftkd
from sftkd_cli.acquisition import Acquisition
from sftkd_cli.config import load_recipe
from sftkd_cli.errors import SftkdError
from sftkd_cli.export import export_run, exportable, write_torchscript
from sftkd_cli.exported import EXPORT_OPS, load_exported, node_kinds
from sftkd_cli.models import FAMILIES, build_model, family_of

torch.set_num_threads(1)

#: other sizes exported per family besides its example (D5C5, U2C5, VDSR12), in the default variant
OTHER_NAMES = ("D2C1", "D3C5", "U3C1", "VDSR4")


def _variants() -> list[tuple[str, str, str, int]]:
    """(name, values, k-space layout, pad) of every kind of model `sftkd export` can write: each
    family's example for each kind of image it reconstructs, each k-space layout and a pad that
    covers the block's convs, a smaller one and none; then other sizes."""
    variants = []
    for family in FAMILIES:
        layouts = ("corner", "centered") if family.data_consistency else ("corner",)
        pads = (5, 1, 0) if family.data_consistency else (0,)
        variants += [(family.example, values, layout, pad)
                     for values, _ in family.accepts for layout in layouts for pad in pads]
    return variants + [(name, "magnitude", "corner", 5) for name in OTHER_NAMES]


@pytest.mark.parametrize("traced_mask_batch", [1, 2])
@pytest.mark.parametrize(("name", "values", "layout", "pad"), _variants())
def test_every_exported_variant_passes_the_op_check(name, values, layout, pad, traced_mask_batch, tmp_path):
    """Written as `sftkd export --format torchscript` writes it (the family's wrapper, export's
    writer) at an odd size, batch 2 with mask batch 1 or 2 (export traces a mask per sample), it
    loads (the op check passes), runs at another size and batch with a different mask per sample
    (batch 2) or one mask (batch 1), and matches the model. A model change that adds an op fails
    here (add the op to EXPORT_OPS once it is known to touch no files), not in users' hands."""
    channels = 2 if values == "complex" else 1
    task = "recon" if family_of(name).data_consistency else "sr"  # VDSR: super-resolution
    acquisition = Acquisition(task=task, kspace_layout=layout, values=values, channels=channels)
    model = build_model(name, channels=4, pad=pad, acquisition=acquisition).eval()
    wrapper = exportable(model, (15, 13), False).eval()
    path = tmp_path / f"{name}.ts"
    with torch.no_grad():
        write_torchscript(wrapper, _inputs((2, channels, 15, 13), mask_batch=traced_mask_batch), path)
    exported = load_exported(path)
    for shape in ((2, channels, 15, 13), (1, channels, 16, 12)):
        zf, kspace, mask = _inputs(shape, mask_batch=shape[0])
        assert shape[0] == 1 or not torch.equal(mask[0], mask[1])  # a mask per sample
        with torch.no_grad():
            expected = model(zf, torch.complex(kspace[:, :1], kspace[:, 1:]), mask)
        torch.testing.assert_close(exported(zf, kspace, mask), expected, atol=1e-5, rtol=0)


def _inputs(shape: tuple[int, int, int, int], mask_batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (zf, kspace (B,2,H,W), 0/1 mask) of an image `shape` (B,C,H,W)."""
    g = torch.Generator().manual_seed(0)
    batch, _, h, w = shape
    mask = (torch.rand(mask_batch, 1, h, w, generator=g) > 0.5).float()
    return torch.rand(shape, generator=g), torch.rand(batch, 2, h, w, generator=g), mask


def _save_script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation
        torch.jit.save(torch.jit.script(module), str(path))
    return path


class _WritesInForward(torch.nn.Module):
    """forward creates (or overwrites) `target` with 16 bytes of 'X', then returns zf like a model."""

    def __init__(self, target: Path) -> None:
        super().__init__()
        self.target = str(target)

    def forward(self, zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.target, shared=True, size=16, dtype=torch.uint8).fill_(88)
        return zf + written.sum() * 0


class _WritesInNestedBlocks(_WritesInForward):
    """The same inside a prim::If block and a prim::Loop block in it."""

    def __init__(self, target: Path) -> None:
        super().__init__(target)
        self.write = True

    def forward(self, zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = zf
        if self.write:
            for _ in range(1):
                out = zf + torch.from_file(self.target, shared=True, size=16, dtype=torch.uint8).fill_(88).sum() * 0
        return out


class _WritesInHook(torch.nn.Module):
    """A plain forward; its forward hook (`_writing_hook`) writes `target`."""

    def __init__(self, target: Path) -> None:
        super().__init__()
        self.target = str(target)
        self.seen = 0

    def forward(self, zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return zf + self.seen


def _writing_hook(module: _WritesInHook, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], out: torch.Tensor) -> None:
    module.seen = int(torch.from_file(module.target, shared=True, size=16, dtype=torch.uint8).fill_(88).sum()) * 0


class _WritesOnLoad(torch.nn.Module):
    """Its __setstate__, which torch.jit.load runs, writes `target`."""

    def __init__(self, target: Path) -> None:
        super().__init__()
        self.target = str(target)

    def forward(self, zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return zf

    @torch.jit.export
    def __getstate__(self) -> str:
        return self.target

    @torch.jit.export
    def __setstate__(self, target: str) -> None:
        self.target = target + str(int(torch.from_file(target, shared=True, size=16, dtype=torch.uint8).fill_(88).sum()) * 0)
        self.training = False


@pytest.mark.parametrize(("where", "op"), [("forward", "aten::from_file"), ("hook", "aten::from_file"),
                                          ("nested", "prim::If")])
def test_a_file_writing_model_is_refused_before_it_runs(where, op, tmp_path):
    """Wherever the op sits, the file is refused naming the first op the check does not know
    (for the nested one the prim::If around it), and the file it would write is never made."""
    target = tmp_path / "written-by-the-model"
    module = {"forward": _WritesInForward, "hook": _WritesInHook, "nested": _WritesInNestedBlocks}[where](target)
    if where == "hook":
        module.register_forward_hook(_writing_hook)
    path = _save_script(module, tmp_path / "evil.ts")
    assert not target.exists()  # scripting and saving run nothing
    with pytest.raises(SftkdError, match=rf"^{re.escape(str(path))}: refused: TorchScript op {op} \(in \w+\) is not one "
                                         r"sftkd export writes; only load exported models you trust$"):
        load_exported(path)(*_inputs((1, 1, 8, 8)))
    assert not target.exists()


def test_code_that_runs_while_loading_is_refused_before_loading(tmp_path):
    target = tmp_path / "written-on-load"
    path = _save_script(_WritesOnLoad(target), tmp_path / "evil.ts")
    assert not target.exists()  # saving runs __getstate__ only
    with pytest.raises(SftkdError, match=r"evil\.ts: refused: TorchScript code that runs while loading \(__setstate__\)"):
        load_exported(path)
    assert not target.exists()


def test_node_kinds_reach_into_nested_blocks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation
        graph = torch.jit.script(_WritesInNestedBlocks(Path("unused"))).inlined_graph
    kinds = list(node_kinds(graph))
    assert {"prim::If", "prim::Loop", "aten::from_file"} <= set(kinds)
    assert not {"prim::If", "prim::Loop", "aten::from_file"} & EXPORT_OPS


@pytest.fixture(scope="module")
def trained_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A D2C2 (4 channels) run trained for one step on the tiny dataset."""
    from sftkd_cli.training.supervised import train_supervised

    recipe = load_recipe(None, [
        f"data.path={tiny_dataset}", "model.name=D2C2", "model.channels=4", "train.epochs=1",
        "train.max_steps_per_epoch=1", "train.device=cpu", f"run.dir={tmp_path_factory.mktemp('runs')}", "run.name=tiny",
    ])
    run, _ = train_supervised(recipe, console=Console(file=io.StringIO()))
    return run.path


def test_evaluate_refuses_a_crafted_file_that_would_write_a_file(trained_run, tmp_path):
    """`sftkd evaluate RUN --exported evil.ts`, a model someone sent with a card beside it: one
    line on stderr naming the file and the op, exit 2, the file it would write never made and no
    scores written. (Before the check it wrote the file and printed a normal metrics table.)"""
    target = tmp_path / "written-by-the-model"
    evil = _save_script(_WritesInForward(target), tmp_path / "evil.ts")
    (tmp_path / "evil.ts.card.json").write_text(json.dumps({"role": "model", "export_format": "torchscript"}))
    result = sftkd("evaluate", trained_run, "--exported", evil, "--device", "cpu", ok=False)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{evil}: refused: TorchScript op aten::from_file (in forward)" in lines[0], result.stderr
    assert "only load exported models you trust" in lines[0]
    assert not target.exists() and not list(trained_run.glob("eval-*"))


def test_an_export_holding_an_op_the_check_does_not_know_is_not_written(trained_run, tmp_path, monkeypatch):
    """Export checks its own file as every loaded file is checked: a torch whose trace holds an op
    missing from EXPORT_OPS fails the export with one line naming the target, and leaves nothing."""
    monkeypatch.setattr(exported_module, "EXPORT_OPS", EXPORT_OPS - {"aten::fft_fft2"})
    out = tmp_path / "out" / "m.ts"
    with pytest.raises(SftkdError, match=rf"^{re.escape(str(out))}: the written file fails the check every exported file gets on "
                                         r"loading, nothing written \(.*TorchScript op aten::fft_fft2 \(in forward\)"):
        export_run(trained_run, "torchscript", out=out)
    assert not out.parent.exists()  # nor the folder made for it


def test_a_zip_entry_name_that_is_not_utf8_is_not_a_torchscript_model(tmp_path):
    """A damaged or crafted archive whose entry claims UTF-8 but is not: one line, not a traceback."""
    import zipfile

    path = tmp_path / "bad.ts"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a", b"data")
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 0x08  # general purpose flags, low byte: bit 11 (UTF-8 names) is 0x0800
    data[central + 9] |= 0x08
    name_at = central + 46
    data[name_at] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SftkdError, match="bad.ts: not a TorchScript model"):
        exported_module.check_no_load_time_code(path)
