"""Hardware specs: the YAML description of a machine the compiler plans for (DESIGN §7).

A spec describes a cluster of identical nodes::

    name: summit
    description: ...
    nodes:
      count: 4608
      cpu:     {model, sockets, cores_per_socket, clock_ghz, gflops_per_core_fp64, ...}
      memory:  {kind, capacity_gb, bandwidth_gb_per_s}
      gpus:    {kind, count, memory_gb, memory_bandwidth_gb_per_s, fp32_tflops, ...}  # optional
      disks:   [{kind, count, capacity_gb, read_gb_per_s, write_gb_per_s}]
      links:   [{kind, between, bandwidth_gb_per_s, latency_us}]
    network:    {kind, topology, injection_bandwidth_gb_per_s, latency_us, nics_per_node}
    filesystem: {kind, name, aggregate_bandwidth_gb_per_s, per_node_bandwidth_gb_per_s}
    sources:     {dotted.field.path: reference|estimate|detected|default|measured}  # optional
    calibration: {op_kind: {figure_name: number}}                                   # optional

Units are part of every field name: ``_gb`` = gigabytes (10^9 bytes, decimal, also for
memory sizes), ``_gb_per_s`` = gigabytes per second (bytes, not bits), ``_us`` =
microseconds, ``_ghz``, ``_gflops``/``_tflops`` = 10^9 / 10^12 floating-point operations per
second. Every size, rate and count must be a positive number.

Every user-caused problem raises :class:`opgraph.errors.SpecError` with the spec file and
the line of the offending key, e.g. ``summit.yaml:14: nodes.gpus.memory_gb: expected a
positive number, got 'abc'``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from opgraph.errors import SpecError

GB = 10**9  # all ``_gb`` fields are decimal gigabytes

# ------------------------------------------------------------------ value types


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null (empty)"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _as_number(value: Any) -> float | None:
    # bool is an int in Python but never a sensible size; PyYAML reads ``1e3`` (no dot)
    # as a string, so numeric strings are accepted too.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _positive_number(value: Any) -> float:
    number = _as_number(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise PydanticCustomError(
            "positive_number", "expected a positive number, got {got}", {"got": _show(value)}
        )
    return number


def _positive_integer(value: Any) -> int:
    number = _as_number(value)
    if number is None or not number.is_integer() or number <= 0:
        raise PydanticCustomError(
            "positive_integer", "expected a positive integer, got {got}", {"got": _show(value)}
        )
    return int(number)


def _finite_number(value: Any) -> float:
    number = _as_number(value)
    if number is None or not math.isfinite(number):
        raise PydanticCustomError("number", "expected a number, got {got}", {"got": _show(value)})
    return number


PositiveFloat = Annotated[float, Field(gt=0), BeforeValidator(_positive_number)]
PositiveInt = Annotated[int, Field(gt=0), BeforeValidator(_positive_integer)]
FiniteFloat = Annotated[float, BeforeValidator(_finite_number)]
Text = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]

LinkKind = Literal[
    "nvlink", "nvswitch", "pcie", "infinity-fabric", "xgmi", "numa", "upi", "xbus", "other"
]
LinkEnds = Literal["cpu-gpu", "gpu-gpu", "cpu-cpu"]
Topology = Literal["fat-tree", "dragonfly", "torus", "ethernet", "loopback", "other"]
# Where a figure comes from: a published reference, an engineering estimate, read from
# this machine, a documented default, or measured by ``opgraph calibrate``.
Source = Literal["reference", "estimate", "detected", "default", "measured"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ------------------------------------------------------------------ the model


class Cpu(_Section):
    """The CPUs of one node. ``cores_per_socket`` counts cores usable by jobs (Summit
    reserves 1 of 22 per socket for the OS); for detected machines it counts the logical
    CPUs this process may run on."""

    model: Text = "unknown"
    sockets: PositiveInt
    cores_per_socket: PositiveInt
    clock_ghz: PositiveFloat
    gflops_per_core_fp64: PositiveFloat
    # Optional: when absent, twice the fp64 figure (SIMD lanes double for fp32).
    gflops_per_core_fp32: PositiveFloat | None = None

    @property
    def cores(self) -> int:
        return self.sockets * self.cores_per_socket

    @property
    def fp32_gflops_per_core(self) -> float:
        return self.gflops_per_core_fp32 or 2 * self.gflops_per_core_fp64


class Memory(_Section):
    """Main memory of one node: size in GB and sustained bandwidth in GB/s."""

    kind: Text = "DRAM"
    capacity_gb: PositiveFloat
    bandwidth_gb_per_s: PositiveFloat


class Gpus(_Section):
    """The accelerators of one node (all alike). ``count`` is per node; memory, bandwidth
    and TFLOP/s are per device. A multi-die package (MI250X) may be listed per die."""

    kind: Text
    count: PositiveInt
    memory_gb: PositiveFloat
    memory_bandwidth_gb_per_s: PositiveFloat
    fp32_tflops: PositiveFloat
    fp64_tflops: PositiveFloat | None = None
    fp16_tflops: PositiveFloat | None = None
    bf16_tflops: PositiveFloat | None = None


class Disk(_Section):
    """Node-local disks of one kind: ``count`` alike devices; capacity and read/write
    bandwidth are per device."""

    kind: Text
    count: PositiveInt = 1
    capacity_gb: PositiveFloat
    read_gb_per_s: PositiveFloat
    write_gb_per_s: PositiveFloat


class Link(_Section):
    """An intra-node interconnect between two device classes: per-link bandwidth in GB/s
    (one direction) and latency in microseconds."""

    kind: LinkKind
    between: LinkEnds
    bandwidth_gb_per_s: PositiveFloat
    latency_us: PositiveFloat
    note: Text | None = None


class Node(_Section):
    """``count`` identical nodes and what each one holds."""

    count: PositiveInt
    cpu: Cpu
    memory: Memory
    gpus: Gpus | None = None
    disks: list[Disk] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)


class Network(_Section):
    """The inter-node network: per-node injection bandwidth (all NICs together, GB/s, one
    direction) and end-to-end small-message latency (microseconds)."""

    kind: Text
    topology: Topology
    injection_bandwidth_gb_per_s: PositiveFloat
    latency_us: PositiveFloat
    nics_per_node: PositiveInt = 1


class Filesystem(_Section):
    """The filesystem all nodes read inputs from: aggregate bandwidth over the whole
    system and, optionally, the most one node can draw (GB/s)."""

    kind: Text
    name: Text | None = None
    aggregate_bandwidth_gb_per_s: PositiveFloat
    per_node_bandwidth_gb_per_s: PositiveFloat | None = None


@dataclass
class SpecOrigin:
    """Where a spec was read from: the file name (as the user gave it, or ``summit.yaml``
    for packaged specs) and the 1-based (line, column) of each dotted field path."""

    file: str
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def position_of(self, path: str) -> tuple[int, int] | None:
        return self.positions.get(path)


class HardwareSpec(_Section):
    """A whole system. Equality compares contents only, not where it was read from."""

    name: Text
    description: str = ""
    nodes: Node
    network: Network
    filesystem: Filesystem
    # Provenance of figures, keyed by dotted field path ("nodes.memory.bandwidth_gb_per_s").
    sources: dict[str, Source] = Field(default_factory=dict)
    # Measured throughputs, op kind -> figure name -> value; written by ``opgraph calibrate``.
    calibration: dict[str, dict[str, FiniteFloat]] = Field(default_factory=dict)

    _origin: SpecOrigin | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HardwareSpec):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    @property
    def origin(self) -> SpecOrigin | None:
        return self._origin

    # --- derived figures used by the cost model (bytes, seconds and FLOP/s, not GB) ---

    @property
    def node_count(self) -> int:
        return self.nodes.count

    @property
    def cores_per_node(self) -> int:
        return self.nodes.cpu.cores

    @property
    def total_cores(self) -> int:
        return self.nodes.count * self.cores_per_node

    @property
    def gpus_per_node(self) -> int:
        return self.nodes.gpus.count if self.nodes.gpus else 0

    @property
    def total_gpus(self) -> int:
        return self.nodes.count * self.gpus_per_node

    @property
    def memory_per_node_bytes(self) -> int:
        return int(self.nodes.memory.capacity_gb * GB)

    @property
    def total_memory_bytes(self) -> int:
        return self.nodes.count * self.memory_per_node_bytes

    @property
    def memory_bandwidth_bytes_per_s(self) -> float:
        """Per node."""
        return self.nodes.memory.bandwidth_gb_per_s * GB

    @property
    def gpu_memory_bytes(self) -> int:
        """Per GPU device; 0 without GPUs."""
        return int(self.nodes.gpus.memory_gb * GB) if self.nodes.gpus else 0

    @property
    def gpu_memory_bandwidth_bytes_per_s(self) -> float:
        """Per GPU device; 0 without GPUs."""
        return self.nodes.gpus.memory_bandwidth_gb_per_s * GB if self.nodes.gpus else 0.0

    @property
    def cpu_flops_per_node_fp64(self) -> float:
        return self.cores_per_node * self.nodes.cpu.gflops_per_core_fp64 * 1e9

    @property
    def cpu_flops_per_node_fp32(self) -> float:
        return self.cores_per_node * self.nodes.cpu.fp32_gflops_per_core * 1e9

    @property
    def gpu_flops_per_node_fp32(self) -> float:
        return self.gpus_per_node * self.nodes.gpus.fp32_tflops * 1e12 if self.nodes.gpus else 0.0

    @property
    def network_bandwidth_bytes_per_s(self) -> float:
        """Per-node injection bandwidth."""
        return self.network.injection_bandwidth_gb_per_s * GB

    @property
    def network_latency_s(self) -> float:
        return self.network.latency_us * 1e-6

    @property
    def local_disk_bytes(self) -> int:
        """Per node, all local disks together."""
        return int(sum(d.count * d.capacity_gb for d in self.nodes.disks) * GB)

    @property
    def local_disk_read_bytes_per_s(self) -> float:
        """Per node, all local disks striped together."""
        return sum(d.count * d.read_gb_per_s for d in self.nodes.disks) * GB

    @property
    def local_disk_write_bytes_per_s(self) -> float:
        return sum(d.count * d.write_gb_per_s for d in self.nodes.disks) * GB

    @property
    def filesystem_bandwidth_per_node_bytes_per_s(self) -> float:
        """What one node can read from the shared filesystem when all nodes read at once:
        the per-node cap, its share of the aggregate, and its network injection bound."""
        fs = self.filesystem
        share = fs.aggregate_bandwidth_gb_per_s / self.nodes.count
        cap = fs.per_node_bandwidth_gb_per_s or math.inf
        if self.nodes.count > 1:
            cap = min(cap, self.network.injection_bandwidth_gb_per_s)
        return min(share, cap) * GB

    def link(self, between: str) -> Link | None:
        """The fastest intra-node link of a class (``cpu-gpu``, ``gpu-gpu``, ``cpu-cpu``)."""
        links = [lk for lk in self.nodes.links if lk.between == between]
        return max(links, key=lambda lk: lk.bandwidth_gb_per_s, default=None)

    def to_yaml(self) -> str:
        """The spec as YAML in field order; loading it gives an equal spec."""
        data = self.model_dump(exclude_none=True)
        for optional_section in ("sources", "calibration"):
            if not data[optional_section]:
                del data[optional_section]
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


# ------------------------------------------------------------------ loading

_PACKAGE = "opgraph.hardware_specs"


def packaged_specs() -> list[str]:
    """Names of the specs shipped with opgraph (``summit``, ``frontier``, ...)."""
    files = resources.files(_PACKAGE).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


# Parsed specs by (resolved path, mtime_ns, size, display name): parsing the YAML costs
# 15-30 ms per ``pipeline.run``. Callers get a deep copy (specs are mutable models).
_SPEC_CACHE: dict[tuple, HardwareSpec] = {}
_PACKAGED: list[str] | None = None


def _packaged_set() -> list[str]:
    global _PACKAGED
    if _PACKAGED is None:
        _PACKAGED = packaged_specs()
    return _PACKAGED


def _cached_parse(path: Path, file: str) -> HardwareSpec:
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size, file)
    except OSError as e:
        raise SpecError(f"cannot read hardware spec: {e}", file=file) from None
    hit = _SPEC_CACHE.get(key)
    if hit is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"cannot read hardware spec: {e}", file=file) from None
        hit = parse_spec(text, file)
        if len(_SPEC_CACHE) > 64:
            _SPEC_CACHE.clear()
        _SPEC_CACHE[key] = hit
    return hit.model_copy(deep=True)


def load_spec(name_or_path: str, cwd: Path | None = None) -> HardwareSpec:
    """A spec from a YAML file (relative paths against ``cwd``) or, when no such file
    exists, the packaged spec of that name (``summit`` or ``summit.yaml``)."""
    path = Path(name_or_path).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    if path.is_file():
        return _cached_parse(path, name_or_path)

    stem = name_or_path.removesuffix(".yaml").removesuffix(".yml")
    if stem in _packaged_set():
        resource = resources.files(_PACKAGE) / f"{stem}.yaml"
        if isinstance(resource, Path) and resource.is_file():
            return _cached_parse(resource, f"{stem}.yaml")
        return parse_spec(resource.read_text(encoding="utf-8"), f"{stem}.yaml")
    raise SpecError(
        f"unknown hardware spec '{name_or_path}' "
        f"(packaged specs: {', '.join(packaged_specs())}; or give a YAML path)"
    )


def parse_spec(text: str, file: str = "<spec>") -> HardwareSpec:
    """A spec from YAML text; ``file`` names it in errors and op locations."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "malformed YAML"
        line = mark.line + 1 if mark else None
        raise SpecError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.YAMLError as e:
        raise SpecError(f"invalid YAML: {e}", file=file) from None

    if not isinstance(data, dict):
        got = "an empty file" if data is None else _show(data)
        raise SpecError(
            f"expected a mapping with name, nodes, network, filesystem; got {got}", file=file, line=1
        )
    positions: dict[str, tuple[int, int]] = {}
    _index_positions(root, "", positions, file)

    try:
        spec = HardwareSpec.model_validate(data)
    except ValidationError as e:
        raise _spec_error(e, file, positions) from None
    spec._origin = SpecOrigin(file, positions)
    return spec


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _index_positions(
    node: yaml.Node, prefix: str, positions: dict[str, tuple[int, int]], file: str
) -> None:
    """Records where every key's dotted path starts; rejects duplicate keys, which PyYAML
    would silently merge."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = f"{prefix}.{key}" if prefix else key
            if key in seen:
                raise SpecError(f"{path}: duplicate key", file=file, line=_position(key_node)[0])
            seen.add(key)
            positions[path] = _position(key_node)
            _index_positions(value_node, path, positions, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            positions[path] = _position(item)
            _index_positions(item, path, positions, file)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_for(loc: tuple[int | str, ...], positions: dict[str, tuple[int, int]]) -> int | None:
    """Line of the deepest key of ``loc`` present in the file (a missing field reports
    the line of the section it is missing from)."""
    for depth in range(len(loc), 0, -1):
        position = positions.get(_dotted(loc[:depth]))
        if position is not None:
            return position[0]
    return None


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model class whose field list applies at ``loc`` (for 'allowed:')."""
    current: Any = HardwareSpec
    for part in loc:
        while True:  # unwrap Optional, list[...] and dict[str, ...] to the item type
            origin = typing.get_origin(current)
            if origin in (typing.Union, types.UnionType):
                current = next(a for a in typing.get_args(current) if a is not type(None))
            elif origin is Annotated:
                current = typing.get_args(current)[0]
            else:
                break
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
        elif typing.get_origin(current) in (list, dict):
            current = typing.get_args(current)[-1]
        else:
            return None
    origin = typing.get_origin(current)
    if origin in (typing.Union, types.UnionType):
        current = next(a for a in typing.get_args(current) if a is not type(None))
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _describe(error: dict[str, Any]) -> str:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    if kind in ("positive_number", "positive_integer", "number"):
        return error["msg"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
        return f"unknown field{allowed}"
    if kind == "missing":
        return "missing required field"
    if kind == "literal_error":
        return f"expected one of {error['ctx']['expected']}; got {_show(value)}"
    if kind == "string_type":
        return f"expected a string, got {_show(value)}"
    if kind == "string_too_short":
        return "expected a non-empty string"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {_show(value)}"
    if kind == "list_type":
        return f"expected a list, got {_show(value)}"
    return error["msg"][:1].lower() + error["msg"][1:]


def _spec_error(e: ValidationError, file: str, positions: dict[str, tuple[int, int]]) -> SpecError:
    errors = e.errors()
    first = errors[0]
    message = f"{_dotted(first['loc']) or '<top level>'}: {_describe(first)}"
    if len(errors) > 1:
        others = len(errors) - 1
        message += f" (and {others} more problem{'s' if others > 1 else ''})"
    return SpecError(message, file=file, line=_line_for(first["loc"], positions))


# ------------------------------------------------------------------ this machine

# Conservative figures for what cannot be read from the OS; marked "default" in
# ``sources`` and replaced by ``opgraph calibrate`` with measurements.
DEFAULT_CLOCK_GHZ = 2.0
DEFAULT_MEMORY_GB_PER_S_PER_CORE = 7.5  # ~15 GB/s on 2 threads (DESIGN §9)
MAX_DEFAULT_MEMORY_GB_PER_S = 100.0
DEFAULT_DISK_GB_PER_S = {  # kind -> (read, write)
    "nvme": (2.0, 1.0),
    "ssd": (0.5, 0.4),
    "hdd": (0.15, 0.15),
    "unknown": (0.5, 0.3),
}
LOOPBACK_BANDWIDTH_GB_PER_S = 10.0
LOOPBACK_LATENCY_US = 1.0
DEFAULT_GPU = (500.0, 10.0)  # memory GB/s, fp32 TFLOP/s
# Published figures of common GPUs, matched against nvidia-smi names (first match wins).
KNOWN_GPUS: tuple[tuple[str, float, float], ...] = (
    ("H200", 4800.0, 67.0),
    ("H100 PCIe", 2000.0, 51.0),
    ("H100", 3350.0, 67.0),
    ("A100-SXM4-80GB", 2039.0, 19.5),
    ("A100 80GB PCIe", 1935.0, 19.5),
    ("A100", 1555.0, 19.5),
    ("V100", 900.0, 15.7),
    ("A10G", 600.0, 31.2),
    ("A10", 600.0, 31.2),
    ("L40S", 864.0, 91.6),
    ("L4", 300.0, 30.3),
    ("T4", 320.0, 8.1),
)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpuinfo() -> tuple[str, int, float | None, set[str]]:
    """CPU model, socket count, clock (GHz, if reported) and ISA flags."""
    text = _read("/proc/cpuinfo")

    def values(key: str) -> list[str]:
        return re.findall(rf"^{key}\s*:\s*(.*)$", text, flags=re.MULTILINE)

    models = values("model name") or values("cpu") or ["unknown"]
    sockets = len(set(values("physical id"))) or 1
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    mhz = [float(v) for v in values("cpu MHz") if re.fullmatch(r"[\d.]+", v)]
    clock = int(max_khz) / 1e6 if max_khz.isdigit() else (max(mhz) / 1e3 if mhz else None)
    flags = set((values("flags") or [""])[0].split())
    return models[0].strip() or "unknown", sockets, clock, flags


def _fp64_flops_per_cycle(flags: set[str]) -> int:
    # two FMA pipes × SIMD doubles × 2 FLOP per FMA
    if "avx512f" in flags:
        return 32
    if "avx2" in flags and "fma" in flags:
        return 16
    return 4


def _memory_gb() -> float:
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", _read("/proc/meminfo"), flags=re.MULTILINE)
    if match:
        return int(match.group(1)) * 1024 / GB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB


def _disk_kind(directory: Path) -> str:
    """nvme / ssd / hdd from /sys/block of the device holding ``directory``."""
    try:
        dev = os.stat(directory).st_dev
        block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    except OSError:
        return "unknown"
    if not block.exists():  # overlay / network / tmpfs filesystems have no block device
        return "unknown"
    if not (block / "queue").exists():  # a partition: the queue lives on the parent disk
        block = block.parent
    if block.name.startswith("nvme"):
        return "nvme"
    rotational = _read(str(block / "queue" / "rotational")).strip()
    return {"0": "ssd", "1": "hdd"}.get(rotational, "unknown")


def _nvidia_gpus() -> tuple[str, int, float] | None:
    """(name, count, memory GB) of this machine's NVIDIA GPUs, or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    if not rows:
        return None
    name, memory = rows[0][0], rows[0][1] if len(rows[0]) > 1 else ""
    match = re.match(r"([\d.]+)\s*MiB", memory)
    memory_gb = float(match.group(1)) * 2**20 / GB if match else 16.0
    return name, len(rows), memory_gb


def detect_machine(cwd: Path | None = None) -> HardwareSpec:
    """A one-node spec of this machine. Counts and sizes are read from the OS; rates
    that need measuring are documented defaults, listed as such in ``sources``."""
    directory = cwd or Path.cwd()
    sources: dict[str, Source] = {}
    if hasattr(os, "sched_getaffinity"):
        usable = len(os.sched_getaffinity(0))
    else:
        usable = os.cpu_count() or 1
    model, sockets, clock, flags = _cpuinfo()
    if usable % sockets:  # affinity does not cover whole sockets: count as one
        sockets = 1
    sources["nodes.cpu.cores_per_socket"] = "detected"
    sources["nodes.cpu.clock_ghz"] = "detected" if clock else "default"
    clock = clock or DEFAULT_CLOCK_GHZ
    sources["nodes.cpu.gflops_per_core_fp64"] = "default"
    cpu = Cpu(
        model=model,
        sockets=sockets,
        cores_per_socket=usable // sockets,
        clock_ghz=round(clock, 3),
        gflops_per_core_fp64=round(clock * _fp64_flops_per_cycle(flags), 2),
    )

    sources["nodes.memory.capacity_gb"] = "detected"
    sources["nodes.memory.bandwidth_gb_per_s"] = "default"
    memory = Memory(
        capacity_gb=round(_memory_gb(), 2),
        bandwidth_gb_per_s=min(
            DEFAULT_MEMORY_GB_PER_S_PER_CORE * usable, MAX_DEFAULT_MEMORY_GB_PER_S
        ),
    )

    kind = _disk_kind(directory)
    read, write = DEFAULT_DISK_GB_PER_S[kind]
    sources["nodes.disks[0].capacity_gb"] = "detected"
    sources["nodes.disks[0].read_gb_per_s"] = "default"
    sources["nodes.disks[0].write_gb_per_s"] = "default"
    disk = Disk(
        kind=kind,
        capacity_gb=round(shutil.disk_usage(directory).total / GB, 2),
        read_gb_per_s=read,
        write_gb_per_s=write,
    )

    gpus = None
    found = _nvidia_gpus()
    if found:
        name, count, memory_gb = found
        bandwidth, tflops = next(
            ((bw, tf) for key, bw, tf in KNOWN_GPUS if key in name), DEFAULT_GPU
        )
        known = any(key in name for key, _, _ in KNOWN_GPUS)
        sources["nodes.gpus.memory_gb"] = "detected"
        sources["nodes.gpus.memory_bandwidth_gb_per_s"] = "reference" if known else "default"
        sources["nodes.gpus.fp32_tflops"] = "reference" if known else "default"
        gpus = Gpus(
            kind=name, count=count, memory_gb=round(memory_gb, 2),
            memory_bandwidth_gb_per_s=bandwidth, fp32_tflops=tflops,
        )

    sources["network.injection_bandwidth_gb_per_s"] = "default"
    sources["network.latency_us"] = "default"
    sources["filesystem.aggregate_bandwidth_gb_per_s"] = "default"
    return HardwareSpec(
        name="detected",
        description=(
            f"This machine ({os.uname().nodename}), detected by opgraph: core count, memory "
            "and disk sizes and GPUs are read from the OS; memory, disk and loopback network "
            "bandwidths and GFLOP/s are conservative defaults, not measurements "
            "(see 'sources'; run 'opgraph calibrate' to measure them)."
        ),
        nodes=Node(count=1, cpu=cpu, memory=memory, gpus=gpus, disks=[disk]),
        network=Network(
            kind="loopback",
            topology="loopback",
            injection_bandwidth_gb_per_s=LOOPBACK_BANDWIDTH_GB_PER_S,
            latency_us=LOOPBACK_LATENCY_US,
        ),
        filesystem=Filesystem(kind="local", aggregate_bandwidth_gb_per_s=read),
        sources=sources,
    )


# ------------------------------------------------------------------ summary


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.3g}"


def spec_summary(spec: HardwareSpec) -> str:
    """A human-readable multi-line summary (``opgraph hw show``)."""
    n, cpu, mem, gpus = spec.nodes, spec.nodes.cpu, spec.nodes.memory, spec.nodes.gpus
    rows: list[tuple[str, str]] = [
        ("nodes", f"{n.count:,}"),
        (
            "cpu / node",
            f"{cpu.sockets} × {cpu.model}, {cpu.cores_per_socket} usable cores each "
            f"({cpu.cores} total) @ {_num(cpu.clock_ghz)} GHz, "
            f"{_num(cpu.gflops_per_core_fp64)} GFLOP/s/core fp64",
        ),
        (
            "memory / node",
            f"{_num(mem.capacity_gb)} GB {mem.kind}, {_num(mem.bandwidth_gb_per_s)} GB/s",
        ),
    ]
    if gpus:
        optional = (("fp64", gpus.fp64_tflops), ("fp16", gpus.fp16_tflops), ("bf16", gpus.bf16_tflops))
        extra = ", ".join(f"{_num(v)} TF {k}" for k, v in optional if v)
        rows.append((
            "gpus / node",
            f"{gpus.count} × {gpus.kind}, {_num(gpus.memory_gb)} GB @ "
            f"{_num(gpus.memory_bandwidth_gb_per_s)} GB/s, {_num(gpus.fp32_tflops)} TF fp32"
            + (f", {extra}" if extra else ""),
        ))
    else:
        rows.append(("gpus / node", "none"))
    for d in n.disks:
        rows.append((
            "local disk",
            f"{d.count} × {d.kind} {_num(d.capacity_gb)} GB, "
            f"{_num(d.read_gb_per_s)}/{_num(d.write_gb_per_s)} GB/s read/write",
        ))
    for lk in n.links:
        rows.append((
            f"link {lk.between}",
            f"{lk.kind} {_num(lk.bandwidth_gb_per_s)} GB/s, {_num(lk.latency_us)} µs"
            + (f" ({lk.note})" if lk.note else ""),
        ))
    net = spec.network
    rows.append((
        "network",
        f"{net.kind}, {net.topology}, {net.nics_per_node} NIC(s)/node, "
        f"{_num(net.injection_bandwidth_gb_per_s)} GB/s/node, {_num(net.latency_us)} µs",
    ))
    fs = spec.filesystem
    per_node = ""
    if fs.per_node_bandwidth_gb_per_s:
        per_node = f", {_num(fs.per_node_bandwidth_gb_per_s)} GB/s/node"
    rows.append((
        "filesystem",
        f"{fs.kind}{f' ({fs.name})' if fs.name else ''}, "
        f"{_num(fs.aggregate_bandwidth_gb_per_s)} GB/s aggregate{per_node}",
    ))
    rows.append((
        "totals",
        f"{spec.total_cores:,} cores, {spec.total_gpus:,} GPUs, "
        f"{_num(spec.total_memory_bytes / GB)} GB memory",
    ))
    defaults = sorted(k for k, v in spec.sources.items() if v == "default")
    if defaults:
        rows.append(("defaults (not measured)", ", ".join(defaults)))
    for op_kind, figures in spec.calibration.items():
        measured = ", ".join(f"{k}={_num(v)}" for k, v in figures.items())
        rows.append((f"calibrated {op_kind}", measured))

    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{spec.name}: {spec.description}" if spec.description else spec.name,
                  show_header=False, title_justify="left", box=None, padding=(0, 1))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    out = StringIO()
    Console(file=out, width=110, no_color=True, color_system=None, highlight=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"
