"""The ``machine`` dialect: the hardware a pipeline is compiled for, inside its module.

(Not ``hw``: CIRCT owns that name.) A system is a ``machine.system`` op plus one op per
component, all zero-operand, zero-result ops at module top level that name their system in
a ``system`` string attribute. Attribute names and units are those of the YAML fields of
``opgraph.hwspec`` (``_gb`` = 10^9 bytes, ``_gb_per_s`` = GB/s, ``_us`` = microseconds);
integers are ``i64``, reals ``f64``::

    "machine.system"() {sym_name = "summit", nodes = 4608 : i64} : () -> ()
    "machine.cpu"() {system = "summit", model = "IBM POWER9", sockets = 2 : i64,
                     cores_per_socket = 21 : i64, clock_ghz = 3.07 : f64, ...} : () -> ()
    "machine.memory"()     {system, kind, capacity_gb, bandwidth_gb_per_s}
    "machine.gpu"()        {system, kind, count, memory_gb, memory_bandwidth_gb_per_s,
                            fp32_tflops, [fp64_tflops, fp16_tflops, bf16_tflops]}
    "machine.disk"()       {system, kind, count, capacity_gb, read_gb_per_s, write_gb_per_s}
    "machine.link"()       {system, kind, between, bandwidth_gb_per_s, latency_us, [note]}
    "machine.network"()    {system, kind, topology, injection_bandwidth_gb_per_s,
                            latency_us, nics_per_node}
    "machine.filesystem"() {system, kind, [fs_name], aggregate_bandwidth_gb_per_s,
                            [per_node_bandwidth_gb_per_s]}
    "machine.calibration"() {system, op_kind, figures = {name = value : f64, ...}}

Flat top-level ops (no regions) keep the IRDL twin trivial and let passes find the machine
with one scan of the module body. The system op checks that its required components exist
exactly once; each component checks that its system exists. Every op is located at its
section of the spec file (``loc("summit.yaml":12:3)``).

The module also carries the upstream form, ``dlti.target_system_spec`` (see
``dlti_system_spec``), so upstream MLIR tools can read core counts and memory sizes.
``spec_from_machine_ops`` reads a ``HardwareSpec`` back from the ops: the cost model needs
only the IR.
"""

from __future__ import annotations

import math
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from xdsl.dialects.builtin import (
    DictionaryAttr,
    FileLineColLoc,
    Float64Type,
    FloatAttr,
    IntAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    f64,
    i64,
)
from xdsl.dialects.dlti import TargetDeviceSpecAttr, TargetSystemSpecAttr
from xdsl.ir import Attribute, Dialect, Operation
from xdsl.irdl import IRDLOperation, attr_def, irdl_op_definition, opt_attr_def, traits_def
from xdsl.traits import HasParent

from opgraph.dialects.diagnostics import fail as _fail
from opgraph.dialects.diagnostics import where as _where
from opgraph.errors import IRError
from opgraph.hwspec import GB, HardwareSpec, LinkEnds, LinkKind, Topology

DLTI_ATTR = "dlti.target_system_spec"
"""Module attribute holding the upstream ``#dlti.target_system_spec`` of the machine."""


def _check_values(op: Operation) -> None:
    """Numbers are i64 / f64 and positive; strings are non-empty."""
    for key, attr in op.attributes.items():
        if isinstance(attr, IntegerAttr):
            if not (isinstance(attr.type, IntegerType) and attr.type.width.data == 64):
                raise _fail(op, f"{key} must be an i64 integer, got {attr}")
            if attr.value.data <= 0:
                raise _fail(op, f"{key} must be positive, got {attr.value.data}")
        elif isinstance(attr, FloatAttr):
            if not isinstance(attr.type, Float64Type):
                raise _fail(op, f"{key} must be an f64 number, got {attr}")
            value = attr.value.data
            if not math.isfinite(value) or value <= 0:
                raise _fail(op, f"{key} must be positive, got {value}")
        elif isinstance(attr, StringAttr) and not attr.data and key != "description":
            raise _fail(op, f"{key} must not be empty")


def _check_choice(op: Operation, key: str, choices: Any) -> None:
    allowed = typing.get_args(choices)
    value = op.attributes[key]
    assert isinstance(value, StringAttr)
    if value.data not in allowed:
        raise _fail(op, f"{key} must be one of {', '.join(allowed)}, got '{value.data}'")


def _siblings(op: Operation) -> list[Operation]:
    block = op.parent_block()
    return list(block.ops) if block is not None else []


def _system_names(op: Operation) -> list[str]:
    # the module's ops, through the op list's links (after lower-to-kernels the module
    # holds a kernel function per op, and every machine op looks the systems up)
    block = op.parent_block()
    names: list[str] = []
    sibling = block.first_op if block is not None else None
    while sibling is not None:
        if type(sibling) is SystemOp:  # (no subclasses; cheaper than isinstance)
            names.append(sibling.sym_name.data)
        sibling = sibling._next_op  # the property next_op, without its call
    return names


class _ComponentMixin:
    """Shared checks of component ops: values and that the named system exists."""

    def _verify_component(self: Any) -> None:
        _check_values(self)
        if self.parent_block() is None:
            return  # a detached op is checked once it is inserted
        if self.system.data not in _system_names(self):
            raise _fail(self, f"no machine.system named '{self.system.data}' in the module")


@irdl_op_definition
class SystemOp(IRDLOperation):
    """A system of ``nodes`` identical nodes; components name it in their ``system``."""

    name = "machine.system"

    sym_name = attr_def(StringAttr)
    nodes = attr_def(IntegerAttr)
    description = opt_attr_def(StringAttr)
    # Provenance of figures, dotted field path -> "reference" | "estimate" | "detected" | ...
    sources = opt_attr_def(DictionaryAttr)

    traits = traits_def(HasParent(ModuleOp))

    def verify_(self) -> None:
        _check_values(self)
        if not self.sym_name.data:
            raise _fail(self, "sym_name must not be empty")
        if self.sources is not None:
            for key, value in self.sources.data.items():
                if not isinstance(value, StringAttr):
                    raise _fail(self, f"sources['{key}'] must be a string, got {value}")
        name = self.sym_name.data
        if _system_names(self).count(name) > 1:
            raise _fail(self, f"two machine.system ops are named '{name}'")
        if self.parent_block() is None:
            return
        counts: dict[str, int] = {}
        for op in _siblings(self):
            if isinstance(op, _COMPONENT_OPS) and op.system.data == name:
                counts[op.name] = counts.get(op.name, 0) + 1
        for required in (CpuOp, MemoryOp, NetworkOp, FilesystemOp):
            if counts.get(required.name, 0) != 1:
                raise _fail(
                    self,
                    f"system '{name}' needs exactly one {required.name}, "
                    f"found {counts.get(required.name, 0)}",
                )
        if counts.get(GpuOp.name, 0) > 1:
            raise _fail(self, f"system '{name}' has more than one machine.gpu")


@irdl_op_definition
class CpuOp(IRDLOperation, _ComponentMixin):
    """The CPUs of one node; ``cores_per_socket`` counts usable cores."""

    name = "machine.cpu"

    system = attr_def(StringAttr)
    model = attr_def(StringAttr)
    sockets = attr_def(IntegerAttr)
    cores_per_socket = attr_def(IntegerAttr)
    clock_ghz = attr_def(FloatAttr)
    gflops_per_core_fp64 = attr_def(FloatAttr)
    gflops_per_core_fp32 = opt_attr_def(FloatAttr)

    traits = traits_def(HasParent(ModuleOp))

    def verify_(self) -> None:
        self._verify_component()


@irdl_op_definition
class MemoryOp(IRDLOperation, _ComponentMixin):
    """Main memory of one node."""

    name = "machine.memory"

    system = attr_def(StringAttr)
    kind = attr_def(StringAttr)
    capacity_gb = attr_def(FloatAttr)
    bandwidth_gb_per_s = attr_def(FloatAttr)

    traits = traits_def(HasParent(ModuleOp))

    def verify_(self) -> None:
        self._verify_component()


@irdl_op_definition
class GpuOp(IRDLOperation, _ComponentMixin):
    """The GPUs of one node: ``count`` per node, the rest per device."""

    name = "machine.gpu"

    system = attr_def(StringAttr)
    kind = attr_def(StringAttr)
    count = attr_def(IntegerAttr)
    memory_gb = attr_def(FloatAttr)
    memory_bandwidth_gb_per_s = attr_def(FloatAttr)
    fp32_tflops = attr_def(FloatAttr)
    fp64_tflops = opt_attr_def(FloatAttr)
    fp16_tflops = opt_attr_def(FloatAttr)
    bf16_tflops = opt_attr_def(FloatAttr)

    traits = traits_def(HasParent(ModuleOp))

    def verify_(self) -> None:
        self._verify_component()


@irdl_op_definition
class DiskOp(IRDLOperation, _ComponentMixin):
    """``count`` alike node-local disks; capacity and bandwidths per disk."""

    name = "machine.disk"

    system = attr_def(StringAttr)
    kind = attr_def(StringAttr)
    count = attr_def(IntegerAttr)
    capacity_gb = attr_def(FloatAttr)
    read_gb_per_s = attr_def(FloatAttr)
    write_gb_per_s = attr_def(FloatAttr)

    traits = traits_def(HasParent(ModuleOp))

    def verify_(self) -> None:
        self._verify_component()


@irdl_op_definition
class LinkOp(IRDLOperation, _ComponentMixin):
    """An intra-node link class: ``between`` is cpu-gpu, gpu-gpu or cpu-cpu."""

    name = "machine.link"

    system = attr_def(StringAttr)
    kind = attr_def(StringAttr)
    between = attr_def(StringAttr)
    bandwidth_gb_per_s = attr_def(FloatAttr)
    latency_us = attr_def(FloatAttr)
    note = opt_attr_def(StringAttr)

    traits = traits_def(HasParent(ModuleOp))

    def verify_(self) -> None:
        self._verify_component()
        _check_choice(self, "kind", LinkKind)
        _check_choice(self, "between", LinkEnds)


@irdl_op_definition
class NetworkOp(IRDLOperation, _ComponentMixin):
    """The inter-node network; bandwidth is per-node injection over all NICs."""

    name = "machine.network"

    system = attr_def(StringAttr)
    kind = attr_def(StringAttr)
    topology = attr_def(StringAttr)
    injection_bandwidth_gb_per_s = attr_def(FloatAttr)
    latency_us = attr_def(FloatAttr)
    nics_per_node = attr_def(IntegerAttr)

    traits = traits_def(HasParent(ModuleOp))

    def verify_(self) -> None:
        self._verify_component()
        _check_choice(self, "topology", Topology)


@irdl_op_definition
class FilesystemOp(IRDLOperation, _ComponentMixin):
    """The shared filesystem (``fs_name``: ``name`` is taken by the op name in xDSL)."""

    name = "machine.filesystem"

    system = attr_def(StringAttr)
    kind = attr_def(StringAttr)
    fs_name = opt_attr_def(StringAttr)
    aggregate_bandwidth_gb_per_s = attr_def(FloatAttr)
    per_node_bandwidth_gb_per_s = opt_attr_def(FloatAttr)

    traits = traits_def(HasParent(ModuleOp))

    def verify_(self) -> None:
        self._verify_component()


@irdl_op_definition
class CalibrationOp(IRDLOperation, _ComponentMixin):
    """Measured figures of one op kind (``opgraph calibrate``): name -> f64 value."""

    name = "machine.calibration"

    system = attr_def(StringAttr)
    op_kind = attr_def(StringAttr)
    figures = attr_def(DictionaryAttr)

    traits = traits_def(HasParent(ModuleOp))

    def verify_(self) -> None:
        self._verify_component()
        for key, value in self.figures.data.items():
            # measurements may be any finite number, so not _check_values
            if not (isinstance(value, FloatAttr) and isinstance(value.type, Float64Type)):
                raise _fail(self, f"figures['{key}'] must be an f64 number, got {value}")
            if not math.isfinite(value.value.data):
                raise _fail(self, f"figures['{key}'] must be finite, got {value.value.data}")


_COMPONENT_OPS = (CpuOp, MemoryOp, GpuOp, DiskOp, LinkOp, NetworkOp, FilesystemOp, CalibrationOp)

Machine = Dialect(
    "machine",
    [SystemOp, CpuOp, MemoryOp, GpuOp, DiskOp, LinkOp, NetworkOp, FilesystemOp, CalibrationOp],
    [],
)

# ------------------------------------------------------------------ spec -> ops

# op class -> spec section it describes; op attribute names equal the section's field
# names except where _RENAMED says otherwise.
_SECTIONS: dict[type[IRDLOperation], str] = {
    CpuOp: "nodes.cpu",
    MemoryOp: "nodes.memory",
    GpuOp: "nodes.gpus",
    DiskOp: "nodes.disks",
    LinkOp: "nodes.links",
    NetworkOp: "network",
    FilesystemOp: "filesystem",
}
_RENAMED = {"name": "fs_name"}  # model field -> op attribute


def _to_attr(value: Any) -> Attribute:
    if isinstance(value, bool):
        raise TypeError("booleans do not occur in hardware specs")
    if isinstance(value, int):
        return IntegerAttr(value, i64)
    if isinstance(value, float):
        return FloatAttr(value, f64)
    if isinstance(value, str):
        return StringAttr(value)
    raise TypeError(f"no attribute form for {value!r}")


def _from_attr(attr: Attribute) -> Any:
    if isinstance(attr, IntegerAttr):
        return attr.value.data
    if isinstance(attr, FloatAttr):
        return attr.value.data
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, DictionaryAttr):
        return {k: _from_attr(v) for k, v in attr.data.items()}
    raise TypeError(f"unexpected attribute {attr}")


def _section_attrs(section: BaseModel, system: str) -> dict[str, Attribute]:
    attrs: dict[str, Attribute] = {"system": StringAttr(system)}
    for key, value in section.model_dump(exclude_none=True).items():
        attrs[_RENAMED.get(key, key)] = _to_attr(value)
    return attrs


def _locate(op: Operation, spec: HardwareSpec, path: str) -> Operation:
    origin = spec.origin
    position = origin.position_of(path) if origin else None
    file = origin.file if origin else f"<hardware spec {spec.name}>"
    line, column = position or (0, 0)
    op.location = FileLineColLoc(StringAttr(file), IntAttr(line), IntAttr(column))
    return op


def build_machine_ops(spec: HardwareSpec) -> list[Operation]:
    """The ops describing ``spec``, to append to a ``builtin.module`` body."""
    name = spec.name
    system_attrs: dict[str, Attribute] = {
        "sym_name": StringAttr(name),
        "nodes": IntegerAttr(spec.nodes.count, i64),
    }
    if spec.description:
        system_attrs["description"] = StringAttr(spec.description)
    if spec.sources:
        sources = {k: StringAttr(v) for k, v in spec.sources.items()}
        system_attrs["sources"] = DictionaryAttr(sources)
    ops: list[Operation] = [_locate(SystemOp(attributes=system_attrs), spec, "name")]

    n = spec.nodes
    ops.append(_locate(CpuOp(attributes=_section_attrs(n.cpu, name)), spec, "nodes.cpu"))
    ops.append(_locate(MemoryOp(attributes=_section_attrs(n.memory, name)), spec, "nodes.memory"))
    if n.gpus is not None:
        ops.append(_locate(GpuOp(attributes=_section_attrs(n.gpus, name)), spec, "nodes.gpus"))
    for i, disk in enumerate(n.disks):
        disk_op = DiskOp(attributes=_section_attrs(disk, name))
        ops.append(_locate(disk_op, spec, f"nodes.disks[{i}]"))
    for i, link in enumerate(n.links):
        link_op = LinkOp(attributes=_section_attrs(link, name))
        ops.append(_locate(link_op, spec, f"nodes.links[{i}]"))
    ops.append(_locate(NetworkOp(attributes=_section_attrs(spec.network, name)), spec, "network"))
    ops.append(
        _locate(FilesystemOp(attributes=_section_attrs(spec.filesystem, name)), spec, "filesystem")
    )
    for op_kind, figures in spec.calibration.items():
        attrs = {
            "system": StringAttr(name),
            "op_kind": StringAttr(op_kind),
            "figures": DictionaryAttr({k: FloatAttr(v, f64) for k, v in figures.items()}),
        }
        ops.append(_locate(CalibrationOp(attributes=attrs), spec, f"calibration.{op_kind}"))
    return ops


def dlti_system_spec(spec: HardwareSpec) -> TargetSystemSpecAttr:
    """The machine in upstream form: ``#dlti.target_system_spec<"CPU" = ..., "GPU" = ...>``
    with per-node figures (sizes in bytes, rates in GB/s and GFLOP/s or TFLOP/s)."""
    cpu, memory, gpus = spec.nodes.cpu, spec.nodes.memory, spec.nodes.gpus
    devices: dict[str, Attribute] = {
        "CPU": _device_spec({
            "model": StringAttr(cpu.model),
            "num_nodes": IntegerAttr(spec.nodes.count, i64),
            "num_sockets": IntegerAttr(cpu.sockets, i64),
            "num_cores": IntegerAttr(cpu.cores, i64),
            "clock_ghz": FloatAttr(cpu.clock_ghz, f64),
            "gflops_per_core_fp64": FloatAttr(cpu.gflops_per_core_fp64, f64),
            "gflops_per_core_fp32": FloatAttr(cpu.fp32_gflops_per_core, f64),
            "memory_size_in_bytes": IntegerAttr(int(memory.capacity_gb * GB), i64),
            "memory_bandwidth_gb_per_s": FloatAttr(memory.bandwidth_gb_per_s, f64),
        })
    }
    if gpus is not None:
        entries: dict[str, Attribute] = {
            "kind": StringAttr(gpus.kind),
            "num_devices": IntegerAttr(gpus.count, i64),
            "memory_size_in_bytes": IntegerAttr(int(gpus.memory_gb * GB), i64),
            "memory_bandwidth_gb_per_s": FloatAttr(gpus.memory_bandwidth_gb_per_s, f64),
            "fp32_tflops": FloatAttr(gpus.fp32_tflops, f64),
        }
        for key in ("fp64_tflops", "fp16_tflops", "bf16_tflops"):
            value = getattr(gpus, key)
            if value is not None:
                entries[key] = FloatAttr(value, f64)
        devices["GPU"] = _device_spec(entries)
    return TargetSystemSpecAttr(devices)


def _device_spec(entries: dict[str, Attribute]) -> TargetDeviceSpecAttr:
    return TargetDeviceSpecAttr(entries)


def attach_machine(module: ModuleOp, spec: HardwareSpec) -> None:
    """Puts the machine ops of ``spec`` at the start of ``module`` (before the pipeline) and
    sets its DLTI attribute."""
    block = module.body.block
    first = block.first_op
    for op in build_machine_ops(spec):
        if first is None:
            block.add_op(op)
        else:
            block.insert_op_before(op, first)
    module.attributes[DLTI_ATTR] = dlti_system_spec(spec)


# ------------------------------------------------------------------ ops -> spec


def spec_from_machine_ops(module: ModuleOp, system: str | None = None) -> HardwareSpec:
    """The ``HardwareSpec`` described by the machine ops at top level of ``module``;
    ``system`` picks one when the module describes several."""
    top = list(module.body.block.ops)
    systems = [op for op in top if isinstance(op, SystemOp)]
    if system is not None:
        systems = [s for s in systems if s.sym_name.data == system]
    if len(systems) != 1:
        names = ", ".join(s.sym_name.data for s in systems)
        what = f"no machine.system named '{system}'" if system else (
            "no machine.system op" if not systems else f"several machine.system ops ({names})"
        )
        raise IRError(f"{what} in the module")
    system_op = systems[0]
    name = system_op.sym_name.data

    def attrs_of(op: Operation) -> dict[str, Any]:
        renamed_back = {v: k for k, v in _RENAMED.items()}
        return {
            renamed_back.get(k, k): _from_attr(v) for k, v in op.attributes.items() if k != "system"
        }

    components = [op for op in top if isinstance(op, _COMPONENT_OPS) and op.system.data == name]
    data: dict[str, Any] = {
        "name": name,
        "description": system_op.description.data if system_op.description else "",
        "nodes": {"count": system_op.nodes.value.data, "disks": [], "links": []},
        "sources": _from_attr(system_op.sources) if system_op.sources else {},
        "calibration": {},
    }
    for op in components:
        if isinstance(op, CalibrationOp):
            data["calibration"][op.op_kind.data] = _from_attr(op.figures)
            continue
        head, _, key = _SECTIONS[type(op)].rpartition(".")
        target = data["nodes"] if head == "nodes" else data
        if isinstance(target.get(key), list):
            target[key].append(attrs_of(op))
        else:
            target[key] = attrs_of(op)
    try:
        return HardwareSpec.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = _where(system_op)
        field = ".".join(str(p) for p in first["loc"])
        raise IRError(f"machine '{name}' at {where}: {field}: {first['msg']}") from None
