"""`sftkd bench`: how fast are training, SFT, KD and inference on this machine?

Everything runs on synthetic inputs (a random phantom, the paper's 1-D random row mask at
4x, its k-space and zero-filled image), so no dataset is needed. Each measurement is the
median wall time of `repeats` calls after `warmup` untimed calls:

- training steps (forward + backward + Adam step, as the engine does them): teacher D5C5 and
  student D3C5 (Supervised), the SFT joint step (branches batched on CUDA, one by one on the
  CPU, as `sft.batched: auto` runs it), and one KD step per method with the frozen teacher
  under `no_grad`; each in the memory layout the engine chooses on this machine (measured,
  cached per machine: see `sftkd_cli.layout`);
- inference of D5C5 and D3C5 under `torch.inference_mode`, at batch 1 and at `batch`: eager,
  TorchScript (the trace `sftkd export` writes, loaded back as `evaluate --exported` runs it),
  ONNX (the file `sftkd export --format onnx` writes, run in onnxruntime; fp32 on the CPU, with
  the `export` extra installed) and (optionally) `torch.compile`d with frozen weights;
- bf16: teacher and student training steps and inference in fp32 and under bf16 autocast,
  side by side (CPUs with AVX512-BF16 and GPUs; with --precision fp32 only);
- epoch: the teacher trained by the engine (`Trainer.fit`) on synthetic slices at the demo's
  scale, an epoch's wall time (steps, batches, validation, history, checkpoints) against the
  sum of its steps timed alone (`sftkd_cli.bench.epoch`).

Each of these has a "reference way" twin measured in the same run: the same work done as the
paper's code does it (NCHW layout, every conv padded on the full padded map, the KD teacher's
features built with autograd so the backward runs through the teacher, SFT branch by branch).
Their ratio, measured in the same run, is the comparison: both see the same machine and load.

Throughput is reported in GFLOP/s of convolution work, counted analytically
(2 * Cin * Cout * 9 * H' * W' per 3x3 conv on the maps each way computes; a training
step counts as 3x its forward), against a "roof": the best GFLOP/s of one 32->32 3x3 conv
measured in the same run, on the same device, threads and precision (bf16 rows: under bf16
autocast), on a large map and on the run's own maps (batch 1 and --batch): on a CPU the small
maps, which stay in cache, can run far faster than a large one. FFTs, activations and the KD
losses' matrix products are not counted, so the fractions are lower bounds.
"""

from __future__ import annotations

from sftkd_cli.bench.flops import block_flops, conv_flops, model_flops, module_conv_flops, sft_flops
from sftkd_cli.bench.measure import (ACCELERATION, machine_info, measure_roof, precision_context, slice_batch,
                                     synthetic_batch, time_calls, train_step_fn)
from sftkd_cli.bench.reference import TeacherBackpropKD, kd_objectives, reference_way
from sftkd_cli.bench.parts import check_methods, check_parts
from sftkd_cli.bench.results import BenchResult, BenchRow
from sftkd_cli.bench.runner import PRECISIONS, Progress, onnx_runner, run_bench, torchscript_runner

__all__ = [
    "ACCELERATION", "PRECISIONS", "BenchResult", "BenchRow", "Progress", "TeacherBackpropKD", "block_flops", "check_methods",
    "check_parts", "conv_flops", "kd_objectives", "machine_info", "measure_roof", "model_flops", "module_conv_flops",
    "onnx_runner", "precision_context", "reference_way", "run_bench", "sft_flops",
    "slice_batch", "synthetic_batch", "time_calls", "torchscript_runner", "train_step_fn",
]
