"""Reading what a model is from its files, without loading weights: JSON configs and safetensors headers.

A ``.safetensors`` file starts with an 8-byte little-endian header length, then a JSON header giving every
tensor's dtype, shape and byte range in the data that follows. Reading it costs a few kilobytes whatever the
file's size, so every checkpoint is checked here (readable, complete, no pickle) before any weights load, and
families read shapes (channels, widths, block counts) off the header. Every error names the expert (role and
path) and the fix; ``who`` is the phrase that names the expert, e.g. ``"spatial expert (/models/sd15)"``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import NamedTuple

#: suffixes of pickled checkpoints, which can run arbitrary code when loaded; refused everywhere
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
#: a header larger than this is not a real safetensors header (the format itself caps it at 100 MB)
MAX_HEADER_BYTES = 100_000_000
SHARD_INDEX = ".safetensors.index.json"


class TensorInfo(NamedTuple):
    dtype: str
    shape: tuple


def who(role: str, path) -> str:
    """The phrase that names an expert in every message: ``"temporal expert (/path/to/model)"``."""
    return f"{role} expert ({path})"


def read_json(path: Path, who_: str) -> dict:
    """A JSON config; a corrupt one is an error naming the expert and the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{who_}: {path} is not a readable JSON config ({e}); restore it from the model's "
                         f"original download") from None
    if not isinstance(data, dict):
        raise ValueError(f"{who_}: {path} holds {type(data).__name__}, not a config object; restore it from the "
                         f"model's original download")
    return data


def peek_json(path: Path) -> dict:
    """A JSON config for detection: ``{}`` when missing or unreadable (inspection reports those)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def class_name(config: Path) -> str | None:
    """``_class_name`` of a diffusers config, or None when the file is missing or unreadable (for detection)."""
    return peek_json(config).get("_class_name")


def pipeline_kind(path: Path, pipelines: tuple, transformer_class: str, kind: str, unsupported: str) -> str | None:
    """Detection of a transformer pipeline folder: ``kind`` when model_index.json names one of ``pipelines`` (or,
    without model_index.json, transformer/config.json names ``transformer_class``); ``unsupported`` for another
    pipeline of the same family (same name stem, e.g. ``WanImageToVideoPipeline``), so that its error names it."""
    if not path.is_dir():
        return None
    pipeline = class_name(path / "model_index.json")
    if pipeline in pipelines:
        return kind
    if pipeline and pipeline.startswith(pipelines[0].removesuffix("Pipeline")):
        return unsupported
    if pipeline is None and class_name(path / "transformer" / "config.json") == transformer_class:
        return kind
    return None


def refuse_pickle(path: Path, who_: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{who_}: {path.name} is a pickled checkpoint, which can run code when loaded; only "
                         f".safetensors weights are accepted: convert it (e.g. load it once in a trusted "
                         f"environment and save it with safetensors) or download the .safetensors release")


def read_header(path: Path, who_: str) -> dict[str, TensorInfo]:
    """Tensor name -> (dtype, shape) from a safetensors header, after checking that the header is readable and
    that the file holds every byte the header promises (a truncated download fails here, not mid-load)."""
    path = Path(path)
    refuse_pickle(path, who_)
    fix = "the file is damaged or incomplete: download it again"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{who_}: {path} is not a safetensors file ({size} bytes, no header); {fix}")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise ValueError(f"{who_}: {path} has an unreadable safetensors header (it claims {length} bytes "
                                 f"in a {size}-byte file); {fix}")
            header = json.loads(f.read(length).decode("utf-8"))
    except OSError as e:
        raise ValueError(f"{who_}: cannot read {path} ({e.strerror or e}); check the path and its permissions") \
            from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{who_}: {path} has an unreadable safetensors header; {fix}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{who_}: {path} has an unreadable safetensors header; {fix}")
    tensors, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(v) for v in info["data_offsets"])
            tensors[name] = TensorInfo(str(info["dtype"]), tuple(int(d) for d in info["shape"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{who_}: {path} has a malformed safetensors header (entry {name!r}); {fix}") from None
        end = max(end, stop)
    if size < 8 + length + end:
        raise ValueError(f"{who_}: {path} is truncated: it has {size} bytes but its header describes "
                         f"{8 + length + end}; {fix}")
    return tensors


def peek_header(path: Path) -> dict[str, TensorInfo]:
    """A safetensors header for detection: ``{}`` when the path is no readable safetensors file (the registry
    reports those before any family looks)."""
    if not Path(path).is_file() or not Path(path).name.endswith(".safetensors"):
        return {}
    try:
        return read_header(path, str(path))
    except ValueError:
        return {}


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weight files of one model folder (a diffusers/transformers component): single files,
    variants (``*.fp16.safetensors``) and the shards a ``*.safetensors.index.json`` lists."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(".safetensors"))


def has_weights(folder: Path) -> bool:
    """Whether a component folder holds weights of any format (safetensors, shards or pickles)."""
    folder = Path(folder)
    return folder.is_dir() and any(p.name.endswith(".safetensors") or p.name.endswith(SHARD_INDEX)
                                   or p.suffix.lower() in PICKLE_SUFFIXES for p in folder.iterdir())


def read_folder_weights(folder: Path, who_: str, what: str) -> dict[str, TensorInfo]:
    """Check one component folder's weights and return their merged header: safetensors present (pickles
    alone are refused), every file and every shard of a sharded index readable and complete."""
    folder = Path(folder)
    files = weight_files(folder)
    indexes = sorted(folder.glob("*" + SHARD_INDEX)) if folder.is_dir() else []
    shards: set[Path] = set()
    for index in indexes:
        weight_map = read_json(index, who_).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{who_}: {index} has no weight_map; restore it from the model's original download")
        for shard in set(weight_map.values()):
            if not (folder / shard).is_file():
                raise ValueError(f"{who_}: {folder} lacks the shard {shard} that {index.name} lists ({what}); "
                                 f"download the missing file")
            shards.add(folder / shard)
    if not files and not shards:
        pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES] if folder.is_dir() \
            else []
        if pickles:
            refuse_pickle(folder / pickles[0], who_)
        raise ValueError(f"{who_}: {folder} holds no weights ({what}); a diffusers folder saved with "
                         f"save_pretrained() has a .safetensors file there (nothing is downloaded)")
    header: dict[str, TensorInfo] = {}
    for file in sorted(set(files) | shards):
        header.update(read_header(file, who_))
    return header


def require(folder: Path, relative: str, what: str, who_: str | None = None) -> Path:
    """``folder / relative``, which must exist: FileNotFoundError naming what it holds otherwise."""
    target = Path(folder) / relative
    if not target.exists():
        prefix = f"{who_}: " if who_ else ""
        raise FileNotFoundError(f"{prefix}{folder} lacks {relative}, which holds {what}; a diffusers folder saved "
                                f"with save_pretrained() has it (nothing is downloaded)")
    return target


def weights_variant(folder: Path) -> str | None:
    """``"fp16"`` when a component holds only fp16-variant weights (``*.fp16.safetensors``, as a download with
    ``variant="fp16"`` leaves it), so that from_pretrained looks for those files."""
    names = [p.name for p in weight_files(folder)]
    return "fp16" if names and all(".fp16." in n for n in names) else None
