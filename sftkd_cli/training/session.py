"""Setting up and running a training command: datasets, run directory, objective, engine.

`train_supervised`, `train_sft` and `distill` (in their modules) all end in `run_training`,
so every command shares the same run-directory, resume and interruption behaviour.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from sftkd_cli.checkpoints import CheckpointFile, checkpoint_digest, copy_weights, resolve_checkpoint
from sftkd_cli.choices import BEST, LAST, MIN_SIZE, TRAINING_COMMANDS
from sftkd_cli.config import Recipe, TrainConfig, dump_recipe, recipe_to_dict, same_name, validate
from sftkd_cli.data.dataset import SliceDataset, dataset_record, record_acquisition
from sftkd_cli.errors import RecipeValueError, RunInterrupted, SftkdError, counted
from sftkd_cli.files import check_writable, write_run_file
from sftkd_cli.run_files import CHECKPOINTS, ENV_JSON, RECIPE_YAML
from sftkd_cli.runs import RunDir, load_checkpoint
from sftkd_cli.signals import Interrupts, on_signals
from sftkd_cli.models import CascadeNet, build_model
from sftkd_cli.runtime import check_amp, select_device
from sftkd_cli.torchrun import local_processes, said_by_rank_0, world_size
from sftkd_cli.training.engine import FitResult, Trainer, seed_everything
from sftkd_cli.training.graphs import use_cuda_graphs
from sftkd_cli.training.lines import RESUME_HINTS
from sftkd_cli.training.objectives import Objective
from sftkd_cli.training.resume import ResumePoint, history_gap, other_world, resume_point, too_few_epochs

#: recipe keys that may change when resuming (where and how fast, or training for longer: none
#: changes the numbers; data.cache reads the same arrays, train.checkpoint_every only saves more
#: often; a moved, copied or renamed run folder: run.dir and run.name then follow the folder
#: resumed; a moved dataset: the checkpoint's dataset fingerprint must still match, `check_resumable`)
RESUMABLE_CHANGES = {"train.epochs", "train.device", "train.threads", "train.cuda_graphs", "train.checkpoint_every",
                     "eval.split", "eval.checkpoint", "run.dir", "run.name", "data.path", "data.cache"}


def default_run_name(recipe: Recipe, role: str, model: str) -> str:
    """`<data folder>-<role>-<model>-<acceleration>x`. The folder's own name, also for `.`, `..`
    or `data/demo/`: the path is made absolute from the current folder (whose links the OS has
    resolved) and `..` taken away as text; a link named in the path keeps its own name."""
    dataset = Path(os.path.abspath(recipe.data.path)).name or "data"
    return f"{dataset}-{role}-{model}-{recipe.data.acceleration:g}x"


def run_path(recipe: Recipe) -> Path:
    return Path(recipe.run.dir) / recipe.run.name


def run_folder_of(recipe_file: Path | None) -> Path | None:
    """The run folder whose own recipe.yaml `recipe_file` is (a file here named recipe.yaml, beside
    the checkpoints/ folder and the env.json sftkd writes into a run that has begun training); None
    for any other recipe, e.g. a project's recipe.yaml beside a checkpoints/ folder of its own."""
    if recipe_file is None or recipe_file.name != RECIPE_YAML or not recipe_file.is_file():
        return None
    folder = recipe_file.parent  # `recipe.yaml` given inside the run: '.', which has no name to train under
    folder = folder if folder.name not in ("", "..") else Path(os.path.abspath(folder))
    return folder if (folder / CHECKPOINTS).is_dir() and (folder / ENV_JSON).is_file() else None


def follow_run_folder(recipe: Recipe, recipe_file: Path | None) -> Recipe:
    """`recipe` (read from `recipe_file`) training the run folder that file lies in, where it is a
    run's own RUN/recipe.yaml (`run_folder_of`): its run.dir and run.name still name the folder it
    was saved in, so a run moved, copied or renamed since (or the file given from another folder)
    would otherwise train that other folder. For callers where no --name, --runs-dir, run.name= or
    run.dir= names the run instead."""
    folder = run_folder_of(recipe_file)
    if folder is None or (recipe.run.name and _same_folder(run_path(recipe), folder)):
        return recipe  # a recipe naming its own folder keeps its words for it
    return dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, dir=str(folder.parent), name=folder.name))


def model_for(recipe: Recipe, name: str, data: dict[str, object]) -> CascadeNet:
    """A new model `name` with the recipe's widths, built for the dataset's acquisition (`dataset_record`)."""
    return build_model(name, recipe.model.channels, recipe.model.pad, acquisition=record_acquisition(data))


def open_datasets(recipe: Recipe) -> tuple[SliceDataset, SliceDataset]:
    """The training and validation splits of the recipe's prepared dataset (checked before a run is
    made), cut to data.max_train_slices / max_val_slices before data.cache reads them."""
    data = recipe.data
    train = SliceDataset(data.path, data.train_split, data.acceleration, cache=data.cache, task=data.task,
                         mask_per_sample=data.mask_per_sample,  # validation keeps the split's fixed mask
                         max_slices=data.max_train_slices)
    val = SliceDataset(data.path, data.val_split, data.acceleration, cache=data.cache, task=data.task,
                       max_slices=data.max_val_slices)
    height, width = val.image_size
    if min(height, width) < MIN_SIZE:  # a dataset prepared by an older sftkd, which allowed 4
        raise SftkdError(
            f"{data.path}: images of {height}x{width} pixels are too small to train on; expected at least "
            f"{MIN_SIZE}x{MIN_SIZE} (validation scores SSIM); prepare the data with a larger --size"
        )
    return train, val


def last_batch_size(train_slices: int, train: TrainConfig, world: int) -> int:
    """The slices in each process's last batch of an epoch (as `Trainer` cuts it: each process
    takes ceil(train_slices / world), train.max_steps_per_epoch may stop before the last batch)."""
    per_process = math.ceil(train_slices / world)
    steps = math.ceil(per_process / train.batch_size)
    if train.max_steps_per_epoch and train.max_steps_per_epoch < steps:
        return train.batch_size
    return per_process - (steps - 1) * train.batch_size


def _flatten(recipe: Recipe) -> dict[str, object]:
    return {f"{s}.{k}": v for s, values in recipe_to_dict(recipe).items() for k, v in values.items()}


def barrier(world: int) -> None:
    """Wait for every process (no-op for a single process). With NCCL, on this process's GPU
    (torch warns on every version when a barrier does not name it)."""
    if world > 1:
        import torch
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def distributed_context(device: str) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun (WORLD_SIZE > 1;
    the CLI runs only `torchrun.DISTRIBUTED_COMMANDS` there).

    The backend follows the recipe's device, not the machine: `train.device=cpu` uses gloo
    even where CUDA is present; CUDA (`cuda`, or `auto` with a GPU) uses nccl with one GPU per
    process, cuda:LOCAL_RANK. More processes on this machine than GPUs is refused in one line
    before the group starts (otherwise a rank dies with "invalid device ordinal").
    """
    world = world_size()
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        on_cuda = select_device(device).type == "cuda"
        if on_cuda:
            _check_gpus_per_process(device, world)
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if on_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def peer_failed(exc: BaseException) -> bool:
    """Whether `exc` is torch.distributed's report of a collective that failed, as when another
    process of the torchrun left or failed: its DistError types, or the transport errors gloo and
    NCCL raise as plain RuntimeErrors."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc) for word in ("gloo", "NCCL", "Connection closed by peer"))


def _check_gpus_per_process(device: str, world: int) -> None:
    """Under torchrun each process takes cuda:LOCAL_RANK: there must be a GPU for each one."""
    import torch

    if ":" in device:
        raise SftkdError(
            f"train.device={device}: under torchrun each process uses its own GPU (cuda:LOCAL_RANK); "
            "set train.device=cuda, and CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    processes = local_processes(world)
    gpus = torch.cuda.device_count()
    if processes > gpus:
        raise SftkdError(
            f"train.device={device}: torchrun started {processes} processes on this machine but it has "
            f"{gpus} CUDA device(s); expected at most one process per GPU: use --nproc_per_node={gpus}, "
            "or train.device=cpu to run every process on the CPU (gloo)"
        )


def resume_conflict(run: RunDir, recipe: Recipe) -> str:
    """'' when `recipe` may continue the run stored in `run`; else which key differs from the stored
    recipe, in words (only RESUMABLE_CHANGES, e.g. train.epochs, may change). distill.teacher_run
    may name the teacher another way: for a run that recorded its teacher's sha256, whether it is
    still that teacher is `teacher_changed`'s question (callers ask both); else the folder must
    be the same."""
    old, new = _flatten(run.load_recipe()), _flatten(recipe)
    for key, value in new.items():
        if old[key] == value or key in RESUMABLE_CHANGES or same_name(key, old[key], value):
            continue
        if key == "distill.teacher_run" and (_recorded_teacher(run) or _same_folder(old[key], value)):
            continue
        return (f"{run.recipe_file}: {key} was {old[key]!r}, now {value!r}; a resumed run keeps its recipe "
                f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change, and distill.teacher_run may name "
                "the same teacher another way)")
    return ""


def _same_folder(old: object, new: object) -> bool:
    return bool(old and new) and Path(str(old)).resolve() == Path(str(new)).resolve()


def teacher_changed(run: RunDir, recipe: Recipe) -> str:
    """'' unless the distilled run recorded its teacher checkpoint's sha256 and the teacher `recipe`
    names now has another (another run, or retrained or replaced since, even at the same path):
    what differs."""
    teacher = recipe.distill.teacher_run
    return _other_checkpoint(run, "distill.teacher_run", teacher, _recorded_teacher(run) if teacher else None)


def _other_checkpoint(run: RunDir, label: str, source: str, recorded: str | None, verb: str = "learnt from") -> str:
    """'' unless `source` (given as `label`) now holds another checkpoint than the one whose sha256
    the run recorded (None: nothing to check): what differs."""
    if not recorded or checkpoint_digest(source) == recorded:
        return ""
    return (f"{label} {source}: not the checkpoint {run.path} {verb} (whose sha256 begins {recorded[:12]}; "
            "retrained or replaced since?)")


def recorded_start(point: ResumePoint | None) -> tuple[str, str | None] | None:
    """The `init` and `init_sha256` recorded in the checkpoint a resumed run continues from
    (`point`, `resume.resume_point`: last.pt's, or best.pt's where a stop cut its epoch's writes
    short; ('unknown', None) from an sftkd that recorded none); None without one (the run starts
    afresh)."""
    if point is None:
        return None
    return str(point.state.get("init") or "unknown"), point.state.get("init_sha256")


def first_init_from(recipe: Recipe) -> str | None:
    """The `--init-from` the run was started with, as env.json records it (its objective's
    `init_from`; a resume that gave none was refused before it could replace the file): what a
    run resumed before its first checkpoint must start from again. None where there was none."""
    objective = (RunDir(run_path(recipe)).read_env() or {}).get("objective")
    init_from = objective.get("init_from") if isinstance(objective, dict) else None
    return init_from if isinstance(init_from, str) and init_from else None


def start_weights(model: CascadeNet, start: CheckpointFile | None, role: str | None = None) -> tuple[str, str | None]:
    """Copy checkpoint `start` into `model` (its `role` entry, else the one of the model's
    architecture: `copy_weights`); the `init` and `init_sha256` to record: ('random', None) without one."""
    if start is None:
        return "random", None
    return copy_weights(model, start.state, start.path, role), start.sha256


def check_same_start(recipe: Recipe, started: tuple[str, str | None], init_from: str | None) -> None:
    """Refuse, in one line, a resumed run given another start (`init_from`, a run or checkpoint)
    than the `started` (init, init_sha256) its checkpoint recorded. Without `init_from` it goes on:
    its weights come from its checkpoint, which keeps the record (and the start may be gone since)."""
    run, (init, recorded) = RunDir(run_path(recipe)), started
    if not init_from:
        return
    if init == "random":
        raise SftkdError(f"--init-from {init_from}: {run.path} started from random weights; resume without --init-from")
    resolve_checkpoint(init_from)  # one that is gone says so, not that it is another
    changed = _other_checkpoint(run, "--init-from", init_from, recorded, "started from")
    if changed:
        raise SftkdError(f"{changed}: resume with the --init-from it started from, or without --init-from "
                         "(the weights come from its checkpoint)")


def _recorded_teacher(run: RunDir) -> str | None:
    """The teacher checkpoint's sha256 a distilled run recorded (None before any checkpoint, or
    from a version of sftkd that did not record it)."""
    for which in (LAST, BEST):
        if run.checkpoint(which).is_file():
            return load_checkpoint(run.checkpoint(which)).get("teacher_sha256")
    return None


def reconcile_resume(run: RunDir, recipe: Recipe) -> None:
    """On --resume the recipe must match the stored one (`resume_conflict`)."""
    conflict = resume_conflict(run, recipe)
    if conflict:
        raise SftkdError(f"{conflict}: give that file as the recipe with --resume{_naming_folder(run)}")


def _naming_folder(run: RunDir) -> str:
    """The options that make the recipe stored in `run` name that folder again, where it was
    copied, moved or renamed since it was saved (its run.name and run.dir still name the folder
    it was saved in, which resuming would continue instead): '' where it names `run` still."""
    stored = run.load_recipe().run
    options = "" if stored.name == run.path.name else f" --name {shlex.quote(run.path.name)}"
    if not _same_folder(stored.dir, run.path.parent):
        options += f" --runs-dir {shlex.quote(str(run.path.parent))}"
    return options


def check_resumable(run: RunDir, recipe: Recipe, data: dict[str, object], point: ResumePoint | None) -> str:
    """On --resume, before anything is written: a run that has trained needs a state to continue
    from (`point`, `resume.resume_point`: its `last` checkpoint, or `best` where a stop cut the epoch's
    writes short; else it would silently start over, replacing best.pt and the history), that
    checkpoint must come from the same dataset (`dataset_record`'s manifest fingerprint; the
    data may have moved, not changed) and, for distillation, from the same teacher checkpoint
    (its recorded sha256), and train.epochs cannot be fewer than it has trained. A checkpoint
    saved mid-epoch continues with as many processes as saved it (`resume.other_world`).

    Returns '' or, for a run stopped before epoch 1's checkpoints landed but after history.jsonl
    had its row (written first; no checkpoint at all, one row, nothing evaluated or exported
    from it), the line saying it starts over."""
    if point is None:
        rows, best = len(run.read_history()), run.checkpoint(BEST).exists()
        if rows <= 1 and not best and not run.has_results():
            return (f"{run.history_file}: its row of epoch 1 has no checkpoint (stopped before it was written, or "
                    "removed): dropped; starting over from epoch 1") if rows else ""
        what = "best.pt does not hold the state history.jsonl ends at" if best else "so is best.pt"
        raise SftkdError(f"{run.checkpoint(LAST)}: missing, and {what} (history.jsonl has {counted(rows, 'row')}): "
                         "it cannot continue where it stopped; put the checkpoints back, or start over with --force")
    last, saved = point.path, point.state
    refused = too_few_epochs(recipe.train.epochs, point) or other_world(point, world_size()) or history_gap(run, point)
    if refused:
        raise SftkdError(refused)
    trained_on = (saved.get("trained_on") or {}).get("fingerprint")
    if trained_on and trained_on != data["fingerprint"]:
        raise SftkdError(f"{last}: trained on another dataset (manifest fingerprint {str(trained_on)[:12]}) than "
                         f"{data['path']} holds now ({str(data['fingerprint'])[:12]}); resume on the data it was trained on")
    changed = _other_checkpoint(run, "distill.teacher_run", recipe.distill.teacher_run, saved.get("teacher_sha256"))
    if changed:
        raise SftkdError(f"{changed}: resume with the teacher it learnt from")
    return ""


def run_training(
    recipe: Recipe,
    make_objective: Callable[[dict[str, object], ResumePoint | None], Objective],
    *,
    resume: bool = False,
    force: bool = False,
    console: Console | None = None,
    sources: Sequence[str | Path] = (),
) -> tuple[RunDir, FitResult]:
    """Create/reopen the run dir, build the objective, train. The run dir is unlocked at the end.

    `make_objective` gets the dataset record (`dataset_record`: layout, size, acceleration) and,
    on --resume, the state the run continues from (read once here, before the lock).
    `sources`: runs or checkpoint files the objective reads (teacher, init), kept out of the run.
    """
    with said_by_rank_0():
        if resume and force:
            raise SftkdError("--resume continues a run and --force starts it over: give one of them")
        validate(recipe)
        device = select_device(recipe.train.device)  # an unusable device is refused before the run folder exists
        check_amp(recipe.train.amp, device)  # and so is fp16 on a CPU
        use_cuda_graphs(recipe.train.cuda_graphs, device, recipe.train.amp)  # so is train.cuda_graphs=on on a CPU
        run = RunDir(run_path(recipe))
        if resume and run.recipe_file.exists():
            reconcile_resume(run, recipe)
        train_ds, val_ds = open_datasets(recipe)  # validate data before touching the run dir
        data = dataset_record(recipe.data.path, recipe.data.acceleration)
        resuming = resume and run.recipe_file.exists()
        point = resume_point(run) if resuming else None
        starting_over = check_resumable(run, recipe, data, point) if resuming else ""
    seed_everything(recipe.train.seed)  # weight initialisation is part of the recipe
    with said_by_rank_0():  # its refusals (a start or teacher that does not fit) are every process's alike
        objective = make_objective(data, point)
        world = world_size()  # read before the process group starts, which a refusal here would leave behind
        last_note = objective.last_batch_note(last_batch_size(len(train_ds), recipe.train, world),
                                              math.ceil(len(train_ds) / world))
    rank, world = distributed_context(recipe.train.device)
    # the trainer checks its settings against the device (train.cuda_graphs) before the run dir is touched
    trainer = Trainer(objective, recipe, run, console=console, rank=rank, world=world, trained_on=data)
    if rank == 0:  # only rank 0 writes; the others wait until the run dir is ready
        run.prepare(recipe, resume=resume, force=force, sources=sources)
    signalled = Interrupts()  # Ctrl-C or SIGTERM before the fit's own handling (measuring the layout): KeyboardInterrupt
    try:
        with on_signals(signalled, signal.SIGINT, signal.SIGTERM):
            if rank == 0:
                # checkpoints are written in the background, a failed write seen only at the next save
                # (an epoch later): an unwritable checkpoints/ (a resumed run's) is refused before any work
                check_writable(run.path / CHECKPOINTS, "checkpoints folder")
                if resume:
                    write_run_file(run.recipe_file, dump_recipe(recipe))
                if starting_over and resume_point(run) is None and len(run.read_history()) <= 1:  # again, now locked
                    run.history_file.unlink(missing_ok=True)
                    trainer.console.print(starting_over, highlight=False, markup=False, soft_wrap=True)
                for note in (train_ds.cache_note, val_ds.cache_note, last_note):  # a split too large for data.cache; KD's lone-slice batch
                    if note:
                        trainer.console.print(note, highlight=False, markup=False, soft_wrap=True)
            barrier(world)
            result = trainer.fit(train_ds, val_ds, resume=resume)
    except (RunInterrupted, KeyboardInterrupt) as exc:
        raise _interrupted(run, exc, signalled.signum, discard=rank == 0 and not resume, quiet=rank != 0) from None
    except Exception as exc:
        if rank == 0 and not resume:
            run.discard_untrained()  # a new run that failed before its first checkpoint: the retry starts afresh
        if world > 1 and peer_failed(exc):  # the other process said why; torch's traceback would bury it
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SftkdError("another training process failed or was killed (see its message above, or torchrun's report); "
                             f"this one stopped with it (torch: {first[:200]})") from None
        raise
    finally:
        run.unlock()
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return run, result


def _interrupted(run: RunDir, exc: RunInterrupted | KeyboardInterrupt, signum: int, *, discard: bool,
                 quiet: bool) -> RunInterrupted:
    """The error a training stopped by Ctrl-C or SIGTERM (`signum`, unless `exc` says) ends with. A new
    run (`discard`) stopped before its first checkpoint is removed, as a failed start is, so the
    same command starts it again; one with a checkpoint is kept for --resume (`exc` as it is)."""
    signum = exc.signum if isinstance(exc, RunInterrupted) else signum
    by = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    if discard and run.discard_untrained():
        error = RunInterrupted(f"{run.path}: stopped by {by} before its first checkpoint; nothing was saved and the "
                               "run was removed, so the same command starts it again", signum)
    elif isinstance(exc, RunInterrupted):
        return exc
    else:
        error = RunInterrupted(f"{run.path}: stopped by {by}; {RESUME_HINTS[1]}", signum)
    error.quiet = quiet or (isinstance(exc, RunInterrupted) and exc.quiet)  # under torchrun rank 0 alone says it
    return error


def check_run_role(recipe: Recipe, command: str) -> None:
    """Refuse, in one line, a run.role that `command` does not train: the run would be recorded as
    another kind (an SFT run labelled teacher, a KD student labelled sft), which `compare`, the
    report and `distill --init-from sft` then trust and refuse or misplace."""
    roles, role = TRAINING_COMMANDS[command], recipe.run.role
    if role and role not in roles:
        other = next(name for name, trained in TRAINING_COMMANDS.items() if role in trained)
        raise RecipeValueError(f"run.role: {command} trains {' or '.join(roles)} runs, got {role!r} (a run {other} "
                               f"trains); leave run.role out, or use {other}", "run.role")


def with_run(recipe: Recipe, role: str, model: str) -> Recipe:
    """Fill in the run's role (`role` unless run.role says another the same command trains,
    `check_run_role`) and default name."""
    check_run_role(recipe, next(command for command, roles in TRAINING_COMMANDS.items() if role in roles))
    name = recipe.run.name or default_run_name(recipe, role, model)
    return dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, role=recipe.run.role or role, name=name))
