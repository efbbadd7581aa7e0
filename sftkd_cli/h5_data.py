"""Reading an array from an HDF5 file sftkd did not just write itself (a prepared dataset's
volume, a fastMRI input, a --mask-file, a run's recon.h5): `h5_array`.

HDF5 lets an entry keep its data outside the file: external raw storage (bytes of any other
file), external links (an entry of another HDF5 file) and virtual datasets (entries mapped from
other files). h5py follows them silently, so a crafted file could make sftkd read any file the user
can read (its bytes then scored as images, or copied into a card), or wait for ever on a FIFO.
prepare-data and evaluate never write such entries, so every one is refused, before any data is read.
"""

from __future__ import annotations

import h5py

from sftkd_cli.errors import SftkdError

#: the end of the line refusing an entry whose data lives outside its file
_OUTSIDE = ("stores its data outside the file (external storage/link/virtual dataset); "
            "expected data stored in the file, as prepare-data writes it")


def check_in_file(f: h5py.Group, name: str, where: str, _hops: int = 0, _shown: str | None = None) -> None:
    """Refuse an entry `name` of `f` reached through an external link on any part of its path, and
    a dataset with external storage or virtual (mapped from other files): `where` names the file in
    the one-line error. A soft link (a path inside the same file) is followed and its target checked."""
    shown = name if _shown is None else _shown  # the entry asked for, in the error
    parts = [part for part in name.split("/") if part]
    for depth in range(1, len(parts) + 1):
        link = f.get("/".join(parts[:depth]), getlink=True)
        if isinstance(link, h5py.SoftLink) and _hops < 8:  # more hops: a loop, refused below
            base = "/".join(parts[:depth - 1])  # a relative soft link's path starts at its group
            target = link.path if link.path.startswith("/") else f"{base}/{link.path}"
            check_in_file(f, "/".join([target, *parts[depth:]]), where, _hops + 1, shown)
            return
        if link is not None and not isinstance(link, h5py.HardLink):
            raise SftkdError(f"{where}: {shown!r} {_OUTSIDE}")
    item = f.get(name, getlink=False) if parts else None
    if isinstance(item, h5py.Dataset) and (item.external is not None or item.is_virtual):
        raise SftkdError(f"{where}: {shown!r} {_OUTSIDE}")


def h5_array(f: h5py.Group, name: str, where: str) -> h5py.Dataset:
    """The array `name` of an open HDF5 file (`where` names the file), stored in that file; one
    line when it is missing, is a group, not an array (a file prepare-data did not write, which
    h5py would otherwise let fail later as an AttributeError), or keeps its data elsewhere
    (`check_in_file`)."""
    check_in_file(f, name, where)
    if name not in f:
        raise SftkdError(f"{where}: dataset {name!r} missing")
    item = f[name]
    if not isinstance(item, h5py.Dataset):
        raise SftkdError(f"{where}: {name!r} is a {'group' if isinstance(item, h5py.Group) else 'link or other object'}; "
                         "expected an array written by prepare-data")
    return item
