"""Names and defaults that command help shows, in a module that imports nothing heavy.

`sftkd --help`, `sftkd <command> --help`, `--version` and argument errors must not import torch,
NumPy or SciPy (seconds on a busy machine). The command modules under `sftkd_cli.cli` therefore
take what their options show from here; the library modules import the same objects from here
(one definition each).
"""

from __future__ import annotations

from dataclasses import dataclass

from sftkd_cli.acquisition import TASKS

#: recipe defaults that the training commands' help shows (`sftkd_cli.config`'s dataclasses take
#: them from here): data.path, data.acceleration, run.dir, train.epochs, .device, .threads, .amp,
#: distill.method (distill.init: INIT_RANDOM, distill.schedule: JOINT)
DEFAULT_DATA_PATH, DEFAULT_ACCELERATION, DEFAULT_RUNS_DIR = "data/demo", 4.0, "runs"
DEFAULT_EPOCHS, DEFAULT_DEVICE, DEFAULT_THREADS, DEFAULT_AMP = 150, "auto", 0, "off"
DEFAULT_METHOD = "at"

#: the stage kinds of a reproduction plan (`sftkd_cli.reproduce.kinds` holds the plan's other words)
TRAIN_KINDS: tuple[str, ...] = ("teacher", "student", "sft", "std-kd", "sft-kd")
KINDS: tuple[str, ...] = ("data", *TRAIN_KINDS, "evaluate", "report")
#: where `reproduce` runs its stages (--executor): worker processes here, or Ray tasks on a cluster
EXECUTORS: tuple[str, ...] = ("local", "ray")
#: stages that share one GPU at once by default (`reproduce --per-gpu`)
PER_GPU = 4
#: words `reproduce --only` accepts for groups of kinds
KIND_ALIASES: dict[str, tuple[str, ...]] = {"kd": ("std-kd", "sft-kd"), "train": TRAIN_KINDS, "eval": ("evaluate",),
                                            "compare": ("report",)}
#: the end of the label of an SFT-KD stage trained from a random student (`arm_key`)
RANDOM_SUFFIX = "-random"


def arm_key(kind: str, method: str | None = None, random_init: bool = False) -> str:
    """A stage's label and its result arm's key in the report: `<kind>[-<method>][-random]`
    (teacher, std-kd-at, sft-kd-at-random); `parse_arm_key` reads it back."""
    return (kind if method is None else f"{kind}-{method}") + (RANDOM_SUFFIX if random_init else "")


def parse_arm_key(key: str) -> tuple[str, str, bool] | None:
    """(kind, method, random_init) of a KD arm's key (`arm_key` of std-kd or sft-kd with a
    method); None for any other key (teacher, sft-student, ...)."""
    for kind in KIND_ALIASES["kd"]:
        if key.startswith(f"{kind}-"):
            rest = key[len(kind) + 1:]
            return None if rest == RANDOM_SUFFIX[1:] else (kind, rest.removesuffix(RANDOM_SUFFIX), rest.endswith(RANDOM_SUFFIX))
    return None


# (each data source's prepare-data defaults live with the source: `sftkd_cli.data.catalog`)

#: the demo source's templates (`prepare-data demo --source`, a plan's data.options.template)
DEMO_TEMPLATES: tuple[str, ...] = ("icbm152", "colin27")

#: the largest image side sftkd accepts (`prepare-data --size`, `export --size`, `bench --size`):
#: a 4096 x 4096 slice is 64 MB as float32
MAX_SIZE = 4096
#: SSIM's window side (scikit-image's default 7 x 7, uniform): the smallest image SSIM scores
SSIM_WINDOW = 7
#: the smallest image side of a dataset (`prepare-data --size`, native slices): SSIM's window, as
#: training's validation and evaluate score SSIM
MIN_SIZE = SSIM_WINDOW
#: the smallest image side `export --size` accepts: the networks themselves need no more
MIN_EXPORT_SIZE = 4
#: the most CPU threads sftkd accepts (`--threads`, train.threads): more cannot help and can
#: exhaust memory when torch starts them
MAX_THREADS = 1024

#: generated mask kinds (`prepare-data --mask-kind`; how each is drawn: `sftkd_cli.mri.masks`)
MASK_KINDS: tuple[str, ...] = ("random", "equispaced", "fastmri")
#: fastMRI's own masks, drawn as the fastmri package draws them
FASTMRI_KINDS: tuple[str, ...] = ("fastmri-random", "fastmri-equispaced")
#: every kind `make_mask` builds
ALL_KINDS: tuple[str, ...] = MASK_KINDS + FASTMRI_KINDS
#: fraction of lines in the fully sampled low-frequency band, per kind, when not given
DEFAULT_CENTER_FRACTION: dict[str, float] = {"random": 0.04, "equispaced": 0.04, "fastmri": 0.08}
#: fastMRI kinds default to this product / acceleration (fastMRI's pairs: 0.08 at 4x, 0.04 at 8x)
FASTMRI_CENTER_PRODUCT = 0.32

#: the mixed-precision modes (train.amp, --amp): none, bfloat16 autocast (CPUs and GPUs), float16
#: autocast (CUDA only)
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")
#: recipe key train.cuda_graphs: capture the training step in a CUDA graph (auto = when training on CUDA)
CUDA_GRAPHS_MODES: tuple[str, ...] = ("auto", "on", "off")

#: distill.schedule: the KD loss beside L1 in one stage (the paper), or the feature loss alone for
#: distill.stage1_epochs epochs, then L1 fine-tuning (the reference code)
JOINT, TWO_STAGE = "joint", "two-stage"
SCHEDULES: tuple[str, ...] = (JOINT, TWO_STAGE)
#: distill.init's words: random weights ("" or "random"), or the SFT teacher run's student blocks
#: ("sft"); any other value is a run directory or checkpoint file
INIT_RANDOM: tuple[str, ...] = ("", "random")
INIT_SFT = "sft"
INIT_WORDS: tuple[str, ...] = (*INIT_RANDOM, INIT_SFT)

#: the checkpoints every run keeps (RUN/checkpoints/<name>.pt), by name: evaluate/export/plans pick
#: one (best: the lowest validation loss, the default; last: the latest epoch, where training resumes)
BEST, LAST = "best", "last"
CHECKPOINT_NAMES: tuple[str, ...] = (BEST, LAST)

#: recipe key run.role: what a run is for `compare` and the report (empty: the command decides)
RUN_ROLES: tuple[str, ...] = ("teacher", "student", "sft", "kd")
#: the training commands, each with the run roles it may record (run.role): train-teacher trains
#: the teacher or a plain student baseline, the others one kind; they alone run under torchrun
TRAINING_COMMANDS: dict[str, tuple[str, ...]] = {"train-teacher": ("teacher", "student"), "train-sft": ("sft",),
                                                 "distill": ("kd",)}
#: the roles of an SFT run's two networks when scored (metrics.json's role; a KD student's teacher)
SFT_TEACHER, SFT_STUDENT = "sft-teacher", "sft-student"
#: the roles an evaluated model is scored as, besides kd, in the order `compare` lists them
SCORED_ROLES: tuple[str, ...] = ("teacher", SFT_TEACHER, "student", SFT_STUDENT)

#: the values of `train.channels_last`: measured per machine (auto), or forced
LAYOUT_SETTINGS: tuple[str, ...] = ("auto", "true", "false")
#: the values of `sft.batched`: the SFT branches in one batched pass or not (auto: where it is faster)
BATCHED_SETTINGS: tuple[str, ...] = ("auto", "true", "false")

#: `sftkd bench --precision`: full float32, or bfloat16 autocast
BENCH_PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
#: `sftkd bench --only`: the benchmark's parts, in the order they run
BENCH_PARTS: tuple[str, ...] = ("teacher", "student", "sft", "kd", "infer", "bf16", "epoch")
#: the bench's epoch part at the demo's scale: steps of --batch slices per epoch, validation slices,
#: and epochs trained (the first, which measures the layout and captures graphs, is not counted)
EPOCH_STEPS, EPOCH_VAL_SLICES, EPOCH_COUNT = 16, 24, 3
#: the largest batch of the bench's CUDA inference sweep (batch 1, --batch and this)
CUDA_SWEEP_BATCH = 32

#: `sftkd compare --format`: the formats its tables are written in (`sftkd_cli.report.formats.render`)
COMPARE_FORMATS: tuple[str, ...] = ("table", "markdown", "csv", "latex", "json")
#: `sftkd compare --metrics` defaults: the general table, and the paper's Table 1 (`--group paper`)
DEFAULT_METRICS: tuple[str, ...] = ("PSNR", "SSIM", "HFN", "VIF", "NMSE")
PAPER_METRICS: tuple[str, ...] = ("PSNR", "SSIM")
#: `sftkd compare --alpha` and a plan's compare.alpha: p-values below it count as shown
DEFAULT_ALPHA = 0.05
#: the validation curve the report's figures draw by default (a history.jsonl key)
CURVE_KEY = "val_l1"
#: the metrics `sftkd evaluate` scores (`sftkd_cli.metrics` computes them), in its order
METRIC_NAMES: tuple[str, ...] = ("PSNR", "SSIM", "NMSE", "MSE", "HFN", "HFEN", "VIF")
#: the metrics of fastMRI's evaluate.py (METRIC_FUNCS), in its order: `--convention fastmri`
FASTMRI_METRIC_NAMES: tuple[str, ...] = ("MSE", "NMSE", "PSNR", "SSIM")
#: the default metrics of `sftkd compare --convention fastmri` (fastMRI's leaderboard; its MSE is there too)
FASTMRI_METRICS: tuple[str, ...] = ("NMSE", "PSNR", "SSIM")

#: the paper's teacher and student: the defaults of sft.teacher and sft.student, and the networks
#: `sftkd bench` times
TEACHER, STUDENT = "D5C5", "D3C5"
#: parameter counts of the paper's networks (32 channels), for command help; the tests check them
#: against the built models: magnitude images (the paper's) and complex two-channel ones (only
#: the first and last convs grow)
PARAMS: dict[str, dict[str, int]] = {
    TEACHER: {"magnitude": 141_765, "complex": 144_650},
    STUDENT: {"magnitude": 49_285, "complex": 52_170},
}
COMPLEX_PARAMS_TEXT = "; ".join(f"{name} on complex data: {p['complex']:,} params (magnitude: {p['magnitude']:,})"
                                for name, p in PARAMS.items())


@dataclass(frozen=True)
class Architecture:
    """What command help says of one architecture family; `sftkd_cli.models` builds each (its
    `Family` reads these fields from here, so help and the builders share one definition)."""

    form: str  # how its names are written, e.g. DnCm
    example: str  # a name it builds, e.g. D5C5
    label: str  # its short name, e.g. DC-CNN
    detail: str  # one line on what it is
    #: the dataset tasks (`Acquisition.task`) it is built for; the first is its default
    tasks: tuple[str, ...] = TASKS
    #: hard data consistency after its blocks (it reads kspace and mask)
    data_consistency: bool = True

    @property
    def description(self) -> str:
        """'<label>: <detail>', as error messages list the known architectures."""
        return f"{self.label}: {self.detail}"

    @property
    def named(self) -> str:
        """How help names it: form, label and example, and the task when it is built for one only."""
        only = f"; data.task={self.tasks[0]} only" if len(self.tasks) == 1 else ""
        return f"{self.form} ({self.label}, e.g. {self.example}{only})"


#: the architecture families, in the order `sftkd_cli.models.FAMILIES` lists them
ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("DnCm", "D5C5", "DC-CNN", "m cascades of n 3x3 convs, data consistency after each"),
    Architecture("VDSRn", "VDSR12", "VDSR", "super-resolution, n 3x3 convs in 4 blocks, input + residual, no DC",
                 tasks=("sr",), data_consistency=False),
    Architecture("ULCm", "U2C5", "DC-UNet", "m cascades of an L-level U-Net, data consistency after each"),
)


def architecture_named(example: str) -> Architecture:
    """The `ARCHITECTURES` entry whose example is `example` (each family module picks its own)."""
    return next(a for a in ARCHITECTURES if a.example == example)


#: command help on an architecture option (metavar ARCH): every family by form and example
ARCH_TEXT = ", ".join(a.named for a in ARCHITECTURES[:-1]) + f" or {ARCHITECTURES[-1].named}"
#: the families' short names, e.g. "DC-CNN, VDSR or DC-UNet"
ARCH_LABELS = ", ".join(a.label for a in ARCHITECTURES[:-1]) + f" or {ARCHITECTURES[-1].label}"
#: the families without data consistency (they ignore kspace and mask), e.g. "VDSR"
NO_DC_LABELS = " and ".join(a.label for a in ARCHITECTURES if not a.data_consistency)
#: command help of the training commands on super-resolution data
SR_TASK_TEXT = ("Super-resolution data (prepare-data --task sr) needs data.task=sr, the task the dataset was "
                "prepared for; --acc is then the scale factor.")
