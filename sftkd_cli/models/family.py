"""What sftkd knows of one architecture family, in one record: `Family`.

Each family module (dccnn.py, vdsr.py, dcunet.py) defines its `FAMILY`: the name pattern and its
limits, the builder, and the hooks `sftkd export` needs (the traceable wrapper, the model card's
architecture record, whether the network has data consistency, what its input and output are),
the dataset tasks it is built for, and what its blocks pass on (which SFT pairs fit together).
`models/__init__.py` lists them; nothing outside `models/` asks which class a model is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.choices import Architecture
from sftkd_cli.errors import SftkdError
from sftkd_cli.models.base import CascadeNet

#: the largest number of cascades, and of convs per cascade, a name may ask for (the paper's
#: networks have 5); larger names would take minutes just to build, or never finish
MAX_CASCADES = 64
MAX_CONVS = 64

#: builder(name, acquisition, channels, pad) -> a network with fresh weights, fitted to `acquisition`
Builder = Callable[[str, Acquisition, int, int], CascadeNet]
#: exportable(model, image_size, fixed) -> a traceable module forward(zf, kspace (B,2,H,W), mask)
Exportable = Callable[[CascadeNet, tuple[int, int], bool], nn.Module]
#: architecture(model, fixed) -> the model card's "architecture" record
CardRecord = Callable[[CascadeNet, bool], dict[str, Any]]

#: what the model card says of the zf input and the output of a data-consistent network
DC_IO_TEXT = ("zero-filled image |IFFT(kspace)| (orthonormal), as in the training data",
              "reconstructed image (real), after the last data-consistency layer; not clipped (values can "
              "fall below 0 or above the inputs' range)")
#: the same for a network built for complex images (two channels: real, imaginary)
COMPLEX_IO_TEXT = ("zero-filled complex image IFFT(kspace) (orthonormal, with the shifts of the kspace input's "
                   "layout), channel 0 real, channel 1 imaginary",
                   "reconstructed complex image, channel 0 real, channel 1 imaginary, after the last "
                   "data-consistency layer (its magnitude is the image to score)")
#: the state a data-consistent family passes between its blocks: the image after data consistency
IMAGE_STATE = "the image"
#: the images a data-consistent family reconstructs: magnitude (the paper's) or complex two-channel ones
MAGNITUDE_OR_COMPLEX: tuple[tuple[str, int], ...] = (("magnitude", 1), ("complex", 2))


@dataclass(frozen=True)
class Family:
    """One architecture family: names matching `pattern` are built by `build`, exported by `exportable`."""

    pattern: str  # one group per number in the name
    #: its form, example, label, tasks and data consistency, from `choices.ARCHITECTURES` (command help reads them)
    about: Architecture
    build: Builder
    limits: tuple[tuple[str, int], ...]  # (what the number counts, its largest value), per group
    exportable: Exportable
    architecture: CardRecord
    #: (zf input, output) as the model card describes them
    io_text: tuple[str, str] = DC_IO_TEXT
    #: the (values, channels) of the images it reconstructs, see `Acquisition`
    accepts: tuple[tuple[str, int], ...] = (("magnitude", 1),)
    #: what one block hands the next (`CascadeNet.cascade`'s state): SFT feeds a teacher's state to
    #: the student's next block, so both must pass the same kind of state
    between_blocks: str = IMAGE_STATE

    @property
    def example(self) -> str:
        """A name it builds, e.g. D5C5."""
        return self.about.example

    @property
    def description(self) -> str:
        """One line on what it is, e.g. 'DC-CNN: m cascades of ...'."""
        return self.about.description

    @property
    def tasks(self) -> tuple[str, ...]:
        """The dataset tasks it is built for; the first is its default."""
        return self.about.tasks

    @property
    def data_consistency(self) -> bool:
        """Hard data consistency after its blocks: it reads kspace and mask, and its FFT layout must be the data's."""
        return self.about.data_consistency

    def default_acquisition(self) -> Acquisition:
        """The data a network of this family is built for when no dataset is given (a parameter count)."""
        return Acquisition(task=self.tasks[0])

    def io_for(self, acquisition: Acquisition) -> tuple[str, str]:
        """(zf input, output) as the model card describes them for a network built for `acquisition`."""
        return COMPLEX_IO_TEXT if acquisition.values == "complex" else self.io_text

    def check_fits(self, name: str, acquisition: Acquisition) -> None:
        """Refuse data of a task, or images, this family does not reconstruct (e.g. VDSR on recon data)."""
        if (acquisition.values, acquisition.channels) not in self.accepts:
            can = " or ".join(f"{c}-channel {v}" for v, c in self.accepts)
            raise SftkdError(f"model {name}: reconstructs {can} images; the data holds "
                             f"{acquisition.channels}-channel {acquisition.values} images")
        if acquisition.task not in self.tasks:
            raise SftkdError(f"model {name}: built for task {' or '.join(self.tasks)} only, but the data is prepared "
                             f"for task {acquisition.task}; expected a dataset prepared with --task {self.tasks[0]} "
                             f"(and data.task={self.tasks[0]})")
