"""The memory layout chosen per machine (sftkd_cli.layout): forced settings, the measurement,
the cache (reused, per machine and work, tolerant of damage), and the engine's use of it.

Device: CPU.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from sftkd_cli import layout
from sftkd_cli.errors import SftkdError
from sftkd_cli.layout import CACHE_FILE, choose_layout, on_copies
from sftkd_cli.models import build_model
from test_engine import Phantoms

CPU = torch.device("cpu")


def slow_in(slow: torch.memory_format, delay: float = 0.02):
    """A WorkFactory whose work is `delay` seconds slower in the `slow` layout; counts its calls."""
    calls = {torch.contiguous_format: 0, torch.channels_last: 0}

    def factory(memory_format):
        def run():
            calls[memory_format] += 1
            if memory_format == slow:
                time.sleep(delay)
        return run

    return factory, calls


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SFTKD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / CACHE_FILE


@pytest.mark.parametrize("setting, expected", [("true", True), ("false", False), (True, True), (False, False)])
def test_a_forced_setting_is_obeyed_without_measuring(cache: Path, setting, expected):
    factory, calls = slow_in(torch.channels_last)
    choice = choose_layout(setting, CPU, "work", factory)
    assert choice.channels_last is expected
    assert choice.memory_format == (torch.channels_last if expected else torch.contiguous_format)
    assert calls == {torch.contiguous_format: 0, torch.channels_last: 0}
    assert not cache.exists()


@pytest.mark.parametrize("slow, expected", [(torch.channels_last, False), (torch.contiguous_format, True)])
def test_auto_measures_both_layouts_and_keeps_the_faster(cache: Path, slow, expected):
    factory, calls = slow_in(slow)
    choice = choose_layout("auto", CPU, "work", factory)
    assert choice.channels_last is expected
    assert choice.how.startswith("measured here:")
    assert calls[torch.contiguous_format] == calls[torch.channels_last] == layout.ROUNDS + 1  # one warm-up each


def test_the_answer_is_cached_per_machine_and_work(cache: Path):
    factory, calls = slow_in(torch.contiguous_format)
    assert choose_layout("auto", CPU, "work A", factory).channels_last
    first = dict(calls)
    slower_now, _ = slow_in(torch.channels_last)  # would say NCHW if it were measured again
    again = choose_layout("auto", CPU, "work A", slower_now)
    assert again.channels_last and again.how.startswith("measured earlier on this machine: ")
    assert calls == first
    assert choose_layout("auto", CPU, "work B", slower_now).channels_last is False  # another work: measured
    saved = json.loads(cache.read_text())
    assert len(saved) == 2 and all(layout.machine_key() in key for key in saved)


def test_a_damaged_or_unwritable_cache_only_costs_a_measurement(cache: Path, tmp_path: Path, monkeypatch):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    factory, _ = slow_in(torch.channels_last)
    assert choose_layout("auto", CPU, "work", factory).channels_last is False
    assert json.loads(cache.read_text())  # replaced by a good one
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SFTKD_CACHE_DIR", str(blocker / "cache"))  # cannot be a folder
    assert choose_layout("auto", CPU, "work", factory).channels_last is False


def test_auto_is_channels_last_on_cuda_without_measuring(cache: Path):
    factory, calls = slow_in(torch.channels_last)
    choice = choose_layout("auto", torch.device("cuda"), "work", factory)
    assert choice.channels_last and sum(calls.values()) == 0


def test_a_bad_setting_is_one_line():
    with pytest.raises(SftkdError, match="train.channels_last 'yes': expected auto, true or false"):
        choose_layout("yes", CPU, "work", slow_in(torch.channels_last)[0])


def test_the_measurement_works_on_copies_and_leaves_the_random_stream_alone(cache: Path):
    model = build_model("D2C1")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 1, 12, 12)

    def step(twin):
        loss = twin.blocks[0](x).sum()
        loss.backward()
        with torch.no_grad():
            for p in twin.parameters():
                p.add_(1.0)

    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    choose_layout("auto", CPU, "copies", on_copies(model, step))
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.blocks[0].convs[0].weight.is_contiguous()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("SFTKD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert layout.cache_dir() == tmp_path / "xdg" / "sftkd"
    monkeypatch.setenv("SFTKD_CACHE_DIR", str(tmp_path / "own"))
    assert layout.cache_dir() == tmp_path / "own"


def test_without_a_home_directory_the_layout_is_measured_each_time(monkeypatch):
    """No $HOME and no passwd entry (Path.home() raises): no cache, no traceback."""
    for name in ("SFTKD_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(layout.Path, "home", staticmethod(no_home))
    assert layout.cache_dir() is None
    factory, calls = slow_in(torch.channels_last)
    for _ in range(2):
        choice = choose_layout("auto", CPU, "no-home", factory)
        assert choice.channels_last is False and choice.how.startswith("measured here")
    assert calls[torch.contiguous_format] >= 2


def test_a_fifo_in_place_of_the_cache_reads_as_empty(cache: Path):
    """A FIFO must not hang the run (nothing writes to it): the layout is measured."""
    import threading

    cache.parent.mkdir(parents=True)
    os.mkfifo(cache)
    chosen = []
    worker = threading.Thread(target=lambda: chosen.append(choose_layout("auto", CPU, "fifo", slow_in(torch.channels_last)[0])),
                              daemon=True)  # a hang fails the test instead of blocking the suite
    worker.start()
    worker.join(timeout=30)
    assert chosen and chosen[0].channels_last is False and chosen[0].how.startswith("measured here")


@pytest.mark.parametrize("setting, channels_last", [("true", True), ("false", False)])
def test_the_engine_trains_in_the_forced_layout_and_says_which(tmp_path: Path, setting, channels_last):
    from rich.console import Console

    from sftkd_cli.config import load_recipe
    from sftkd_cli.runs import RunDir
    from sftkd_cli.training.engine import Trainer
    from sftkd_cli.training.objectives import Supervised

    recipe = load_recipe(None, ["train.epochs=1", "train.batch_size=2", "train.device=cpu", f"run.dir={tmp_path}",
                                "run.name=r", "run.role=teacher", f"train.channels_last={setting}"])
    run = RunDir(tmp_path / "r")
    run.prepare(recipe, resume=False, force=False)
    console = Console(record=True, width=400)
    model = build_model("D3C1")
    try:
        Trainer(Supervised(model), recipe, run, console=console).fit(Phantoms(), Phantoms(2, seed=1))
    finally:
        run.unlock()
    weight = model.blocks[0].convs[1].weight  # 32 -> 32: the two layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert weight.is_contiguous() is not channels_last
    start = next(line for line in console.export_text().splitlines() if line.startswith("run "))
    assert start.endswith(f"layout {'channels_last' if channels_last else 'NCHW'} (set by train.channels_last)")


def test_the_recipe_key_is_checked():
    from sftkd_cli.config import load_recipe, validate

    assert load_recipe(None, ["train.channels_last=false"]).train.channels_last == "false"
    assert load_recipe(None, []).train.channels_last == "auto"
    with pytest.raises(SftkdError, match="train.channels_last: expected auto, true or false, got 'fast'"):
        validate(load_recipe(None, ["train.channels_last=fast"]))


def test_the_cached_work_names_the_width_the_teacher_and_the_kd_method(monkeypatch):
    """Another model.channels, teacher or KD method (FitNets adds adapters) is other work: it is
    measured, not served a timing taken for the first."""
    from sftkd_cli.training.objectives import Supervised
    from test_sft_kd import _distillation

    works: list[str] = []
    monkeypatch.setattr(layout, "choose_layout", lambda setting, device, work, factory: works.append(work))
    batch = Phantoms(2, size=12)[0]
    batch = {k: v.unsqueeze(0) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    layout.training_layout("auto", Supervised(build_model("D2C2")), batch, CPU)
    layout.training_layout("auto", Supervised(build_model("D2C2", channels=48)), batch, CPU)
    layout.training_layout("auto", _distillation("at")[0], batch, CPU)
    layout.training_layout("auto", _distillation("fitnets")[0], batch, CPU)
    layout.inference_layout("auto", build_model("D2C2"), batch, CPU)
    layout.inference_layout("auto", build_model("D2C2", channels=48), batch, CPU)
    assert len(set(works)) == len(works) == 6
    assert "teacher=D4C3" in works[2] and "kd=AttentionTransfer" in works[2]


def test_the_machine_key_keeps_the_spelling_the_caches_hold():
    """The key of ~/.cache/sftkd/layouts.json entries: respelled, every machine would measure its
    layouts again and evaluate's choice could flip for existing runs."""
    assert layout.machine_key().endswith(f", torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
