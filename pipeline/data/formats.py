"""Find the images (and their label files) of a dataset folder in one of the layouts we know.

Discovery only lists files and reads split lists; it never opens an image, and it never opens
anything that is not a regular file: an entry with an image name that is a FIFO, socket, device
(``os.stat``, without opening it) becomes a candidate with an error (a failed row: visible, never
read, so it cannot hang the index); a symlink to a regular file inside the root is followed and
indexed under the link's own path (its bytes are the target's; a link leading out of the root is
refused by ``datasets.py``), a symlinked folder is not followed, a dangling link fails as missing. It returns one
:class:`Candidate` per manifest row, in a deterministic order, with paths relative to the
root as written (path-escape checks, hashing and header reads happen in ``datasets.py``).

Layouts:

``folder``  any image folder, searched recursively (hidden entries skipped, symlinked folders
            not followed). split = the first folder name when it is train/val/test, else train.
            sample_id = the relative path without extension (with it, when two files differ
            only by extension). A folder holding images under a label folder of a layout
            (segmentation/, depth/, edge/, semseg/, human_parts/, ...: any task's ``layout_dirs``)
            is refused with :class:`LayoutsInFolder`, which names one ``sak-cache index`` command
            per layout: indexed as images, its label PNGs would become training images. Refused
            rather than indexed layout by layout: one command that writes several indexes under
            guessed names is harder to undo than the printed commands are to run.
``nyud``    the NYUD-v2 multi-task layout: images/<id>.png|jpg, segmentation/<id>.png,
            depth/<id>.npy, normals/<id>.png, edge/<id>.png, gt_sets/{train,val,test}.txt.
``pascal``  the PASCAL-Context multi-task layout: JPEGImages/<id>.jpg,
            semseg/pascal-context/<id>.png, human_parts/<id>.png|mat, sal_distill/<id>.png,
            normals_distill/<id>.png, pascal-context/trainval/<id>.mat (the 459-class LabelMap
            the edge label is derived from, as in the official loader),
            ImageSets/Context/{train,val,test}.txt.

Which folder holds a task's labels in a layout is the task's ``layout_dirs`` rule
(:mod:`sak.pipeline.tasks`); this module knows the image folders and split lists only.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ...manifests.errors import DatasetError
from ...manifests.hashing import file_kind
from ..tasks import all_tasks

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("auto", "folder", "nyud", "pascal")
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


@dataclass
class Candidate:
    """One future manifest row before its file is read."""

    sample_id: str
    path: str  # POSIX, relative to the root, as written (for a missing image: the expected path)
    split: str
    labels: dict[str, str] = field(default_factory=dict)  # task -> relative POSIX path
    error: str | None = None  # known to fail already (e.g. a split list names a missing image)


@dataclass(frozen=True)
class _Layout:
    split_dir: str
    images: tuple[str, tuple[str, ...]]  # folder, accepted extensions in preference order


LAYOUTS: dict[str, _Layout] = {
    "nyud": _Layout(split_dir="gt_sets", images=("images", (".png", ".jpg", ".jpeg"))),
    "pascal": _Layout(split_dir="ImageSets/Context", images=("JPEGImages", (".jpg", ".jpeg", ".png"))),
}


class LayoutsInFolder(DatasetError):
    """A folder indexed as plain images holds label folders of dataset layouts; ``commands`` index each layout."""

    def __init__(self, root: Path, found: dict[str, tuple[str, ...]], commands: list[str]):
        self.root, self.found, self.commands = root, found, commands
        where = "; ".join(f"{rel or '.'}/: {', '.join(f'{d}/' for d in dirs)}" for rel, dirs in found.items())
        todo = "".join(f"\n  {c}" for c in commands) if commands else (
            " write its split lists (gt_sets/ for nyud, ImageSets/Context/ for pascal) and index it with --format "
            "nyud or pascal, or index its image folder alone with --format folder")
        super().__init__(f"{root} holds dataset layouts; as an image folder their label files would be indexed as "
                         f"images ({where}). Index each layout on its own:{todo}")

    def with_options(self, options: str) -> LayoutsInFolder:
        """The same refusal with ``options`` (e.g. ``--cache DIR``) appended to every command."""
        return LayoutsInFolder(self.root, self.found, [f"{c} {options}" for c in self.commands])


def label_dirs(fmt: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """task -> (label folder, extensions in preference order) for layout ``fmt``, in registry order."""
    return {task.name: task.layout_dirs[fmt] for task in all_tasks() if fmt in task.layout_dirs}


def detect_format(root: Path) -> str:
    """``nyud`` if root/gt_sets exists, ``pascal`` if root/ImageSets/Context exists, else ``folder``."""
    if (root / LAYOUTS["nyud"].split_dir).is_dir():
        return "nyud"
    if (root / LAYOUTS["pascal"].split_dir).is_dir():
        return "pascal"
    return "folder"


def discover(root: Path, fmt: str) -> list[Candidate]:
    """Candidates of ``root`` in layout ``fmt`` (not ``auto``)."""
    if fmt == "folder":
        return _discover_folder(root)
    if fmt in LAYOUTS:
        return _discover_split_layout(root, fmt, LAYOUTS[fmt])
    raise DatasetError(f"unknown dataset format '{fmt}'; choose one of {', '.join(FORMATS)}")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _not_regular(full: str) -> str | None:
    """None for a regular file (or a link to one, or a dangling link: it fails later as missing), else why not."""
    try:
        mode = os.stat(full).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return f"{full} is {file_kind(mode)}, not a regular file; only regular files are indexed: replace it with the image or remove it"


def _discover_folder(root: Path) -> list[Candidate]:
    rels: list[str] = []
    bad: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                log.warning("not following symlinked folder %s; index its target as its own dataset",
                            os.path.join(dirpath, d))
                continue
            keep.append(d)
        dirnames[:] = keep
        base = PurePosixPath(*Path(dirpath).relative_to(root).parts)
        for f in filenames:
            if f.startswith(".") or not _is_image(f):
                continue
            rel = (base / f).as_posix()
            rels.append(rel)
            why = _not_regular(os.path.join(dirpath, f))
            if why is not None:
                bad[rel] = why
    rels.sort()
    _refuse_label_folders(root, rels)
    stems: dict[str, int] = {}
    for rel in rels:
        stem = rel.rsplit(".", 1)[0]
        stems[stem] = stems.get(stem, 0) + 1
    out = []
    for rel in rels:
        stem = rel.rsplit(".", 1)[0]
        first = rel.split("/", 1)[0].lower() if "/" in rel else ""
        split = first if first in SPLITS else "train"
        out.append(Candidate(sample_id=stem if stems[stem] == 1 else rel, path=rel, split=split, error=bad.get(rel)))
    return out


def _label_folder_names() -> frozenset[str]:
    """First path component of every task's label folder in every layout (segmentation, semseg, edge, ...)."""
    return frozenset(folder.split("/", 1)[0] for task in all_tasks() for folder, _ in task.layout_dirs.values())


def _dataset_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._")[:128] or "dataset"


def _refuse_label_folders(root: Path, rels: list[str]) -> None:
    """Raise :class:`LayoutsInFolder` when an image of ``rels`` lies in a label folder (see the module docstring)."""
    names = _label_folder_names()
    found: dict[str, set[str]] = {}
    for rel in rels:
        parts = rel.split("/")[:-1]
        at = next((i for i, p in enumerate(parts) if p in names), None)
        if at is not None:
            found.setdefault("/".join(parts[:at]), set()).add(parts[at])
    if not found:
        return
    planned: list[tuple[Path, str, str]] = []  # (folder, format, default name)
    for layout in sorted(found):
        where = root / layout if layout else root
        fmt = detect_format(where)
        if fmt != "folder":
            planned.append((where, fmt, fmt))
            continue
        prefix = f"{layout}/" if layout else ""
        image_dirs = sorted({r[len(prefix):].split("/", 1)[0] for r in rels if r.startswith(prefix)
                             and r[len(prefix):].count("/") >= 1} - names)
        planned += [(where / d, "folder", _dataset_name(d)) for d in image_dirs]
    default_names = [name for _, _, name in planned]
    commands = []
    for where, fmt, name in planned:
        cmd = f"sak-cache index {shlex.quote(str(where))} --format {fmt}"
        if default_names.count(name) > 1:
            own = where.name if fmt != "folder" else f"{where.parent.name}-{where.name}"
            cmd += f" --name {_dataset_name(own)}"
        commands.append(cmd)
    raise LayoutsInFolder(root, {k: tuple(sorted(v)) for k, v in sorted(found.items())}, commands)


def _listing(folder: Path) -> dict[str, bool]:
    """Entry name -> is a regular file (or a link to one), for ``folder`` (one directory read, no open)."""
    try:
        with os.scandir(folder) as it:
            return {e.name: e.is_file() for e in it}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def _read_split_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"split list {path} cannot be read ({exc}); it must be UTF-8 text, one id per line") from None
    ids: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        sid = line.strip()
        if not sid or sid.startswith("#"):
            continue
        if sid in seen:
            log.warning("%s lists id '%s' more than once; indexing it once", path, sid)
            continue
        seen.add(sid)
        ids.append(sid)
    return ids


def _discover_split_layout(root: Path, fmt: str, layout: _Layout) -> list[Candidate]:
    split_dir = root / layout.split_dir
    split_files = [(s, split_dir / f"{s}.txt") for s in SPLITS if (split_dir / f"{s}.txt").is_file()]
    if not split_files:
        raise DatasetError(
            f"{root} looks like the {fmt} layout but {split_dir} has no train.txt/val.txt/test.txt; "
            "write one id per line there, or index it as a plain image folder with --format folder"
        )
    img_dir, img_exts = layout.images
    img_names = _listing(root / img_dir)
    labels_of = label_dirs(fmt)
    label_names = {task: _listing(root / folder) for task, (folder, _) in labels_of.items()}
    out: list[Candidate] = []
    where: dict[str, str] = {}
    for split, split_file in split_files:
        list_rel = f"{layout.split_dir}/{split_file.name}"
        for sid in _read_split_file(split_file):
            if sid in where:
                raise DatasetError(
                    f"id '{sid}' is listed in both {where[sid]} and {list_rel}; a sample belongs to one split. "
                    "Remove it from one of the lists."
                )
            where[sid] = list_rel
            if "/" in sid or "\\" in sid or sid.startswith("."):
                out.append(Candidate(sample_id=sid, path=f"{img_dir}/{sid}", split=split,
                                     error=f"id '{sid}' in {list_rel} is not a plain file name (no '/', '\\' "
                                           "or leading '.'); fix the split list"))
                continue
            image = next((f"{sid}{e}" for e in img_exts if f"{sid}{e}" in img_names), None)
            why = _not_regular(str(root / img_dir / image)) if image is not None and not img_names[image] else None
            if why is not None:  # (a dangling link passes here and fails as missing when it is hashed)
                out.append(Candidate(sample_id=sid, path=f"{img_dir}/{image}", split=split, error=why))
                continue
            if image is None:
                out.append(Candidate(sample_id=sid, path=f"{img_dir}/{sid}{img_exts[0]}", split=split,
                                     error=f"listed in {list_rel} but no image {img_dir}/{sid}"
                                           f"{{{','.join(img_exts)}}} exists; add the image or remove the id"))
                continue
            labels = {}
            for task, (folder, exts) in labels_of.items():
                name = next((f"{sid}{e}" for e in exts if f"{sid}{e}" in label_names[task]), None)
                if name is not None and not label_names[task][name]:
                    log.warning("label %s/%s is not a regular file; sample '%s' is indexed without its %s label",
                                folder, name, sid, task)
                elif name is not None:
                    labels[task] = f"{folder}/{name}"
            out.append(Candidate(sample_id=sid, path=f"{img_dir}/{image}", split=split, labels=labels))
    return out
