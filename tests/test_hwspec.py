"""Hardware specs (opgraph.hwspec) and the machine dialect (opgraph.dialects.machine)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from opgraph.dialects.machine import (
    DLTI_ATTR,
    Machine,
    MemoryOp,
    attach_machine,
    build_machine_ops,
    dlti_system_spec,
    spec_from_machine_ops,
)
from xdsl.context import Context
from xdsl.dialects.builtin import (
    Builtin,
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    f64,
    i64,
)
from xdsl.dialects.dlti import DLTI
from xdsl.irdl import OptAttributeDef
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from opgraph.errors import IRError, SpecError
from opgraph.hwspec import (
    GB,
    HardwareSpec,
    detect_machine,
    load_spec,
    packaged_specs,
    parse_spec,
    spec_summary,
)

PACKAGED = ["cloud_a100", "frontier", "laptop", "summit"]
REPO = Path(__file__).resolve().parents[1]
LAPTOP = (REPO / "hardware_specs" / "laptop.yaml").read_text()


def _print(op) -> str:
    out = StringIO()
    Printer(stream=out, print_generic_format=True, print_debuginfo=True).print_op(op)
    return out.getvalue() + "\n"


def _parse(text: str) -> ModuleOp:
    ctx = Context()
    for dialect in (Builtin, DLTI, Machine):
        ctx.load_dialect(dialect)
    return Parser(ctx, text, "test.mlir").parse_module()


def _module(spec: HardwareSpec) -> ModuleOp:
    module = ModuleOp([])
    attach_machine(module, spec)
    return module


# ------------------------------------------------------------------ packaged specs


def test_packaged_specs_are_listed():
    assert packaged_specs() == PACKAGED


@pytest.mark.parametrize("name", PACKAGED + ["summit.yaml", "frontier.yaml"])
def test_packaged_spec_loads_by_name(name, tmp_path):
    spec = load_spec(name, cwd=tmp_path)
    assert spec.name == name.removesuffix(".yaml")
    assert spec.origin is not None and spec.origin.file == f"{spec.name}.yaml"


def test_summit_reference_facts():
    s = load_spec("summit")
    assert s.nodes.count == 4608
    assert (s.nodes.cpu.sockets, s.nodes.cpu.cores_per_socket, s.cores_per_node) == (2, 21, 42)
    assert s.nodes.memory.capacity_gb == 512 and s.nodes.memory.bandwidth_gb_per_s == 340
    gpus = s.nodes.gpus
    assert (gpus.count, gpus.memory_gb, gpus.memory_bandwidth_gb_per_s, gpus.fp32_tflops) == (
        6, 16, 900, 15.7,
    )
    assert s.link("gpu-gpu").kind == "nvlink" and s.link("gpu-gpu").bandwidth_gb_per_s == 50
    assert s.link("cpu-gpu").bandwidth_gb_per_s == 50
    assert s.network.topology == "fat-tree" and s.network.injection_bandwidth_gb_per_s == 23
    assert s.network.nics_per_node == 2
    disk = s.nodes.disks[0]
    assert (disk.kind, disk.capacity_gb) == ("nvme", 1600)
    assert (disk.read_gb_per_s, disk.write_gb_per_s) == (5.5, 2.1)
    assert s.filesystem.kind == "gpfs" and s.filesystem.aggregate_bandwidth_gb_per_s == 2500
    # derived figures in bytes
    assert s.total_cores == 4608 * 42
    assert s.total_gpus == 4608 * 6
    assert s.memory_per_node_bytes == 512 * GB
    assert s.gpu_memory_bytes == 16 * GB
    assert s.network_bandwidth_bytes_per_s == 23 * GB


def test_frontier_reference_facts():
    f = load_spec("frontier")
    assert f.nodes.count == 9408
    assert (f.nodes.cpu.sockets, f.cores_per_node) == (1, 56)
    assert "7A53" in f.nodes.cpu.model
    assert f.nodes.memory.capacity_gb == 512
    gpus = f.nodes.gpus  # 4 MI250X = 8 GCDs of 64 GB: 128 GB per card
    assert "MI250X" in gpus.kind and gpus.count == 8 and gpus.memory_gb * 2 == 128
    assert gpus.memory_bandwidth_gb_per_s * 2 == 3200
    assert gpus.fp32_tflops * 2 == pytest.approx(47.9)
    assert f.link("gpu-gpu").kind == "infinity-fabric"
    assert f.network.nics_per_node == 4 and f.network.injection_bandwidth_gb_per_s == 100
    assert f.network.topology == "dragonfly"
    assert f.nodes.disks[0].count == 2 and f.nodes.disks[0].capacity_gb == 1920
    assert f.filesystem.kind == "lustre" and f.filesystem.aggregate_bandwidth_gb_per_s == 10000


def test_cloud_and_laptop_reference_facts():
    c = load_spec("cloud_a100")
    assert c.nodes.count == 16 and c.total_gpus == 128
    gpus = c.nodes.gpus
    assert (gpus.memory_gb, gpus.memory_bandwidth_gb_per_s, gpus.fp32_tflops) == (80, 2039, 19.5)
    assert c.network.injection_bandwidth_gb_per_s == 50  # 400 Gb/s
    assert c.link("gpu-gpu").bandwidth_gb_per_s == 300

    lap = load_spec("laptop")
    assert lap.nodes.count == 1 and lap.total_cores == 8 and lap.total_gpus == 0
    assert lap.nodes.gpus is None and lap.gpu_memory_bytes == 0
    assert lap.nodes.memory.capacity_gb == 16 and lap.nodes.memory.bandwidth_gb_per_s == 50
    assert lap.network.topology == "loopback"


def test_file_in_cwd_wins_over_packaged_name(tmp_path):
    text = LAPTOP.replace("name: laptop", "name: mine")
    (tmp_path / "summit.yaml").write_text(text)
    spec = load_spec("summit.yaml", cwd=tmp_path)
    assert spec.name == "mine" and spec.origin.file == "summit.yaml"
    assert load_spec(str(tmp_path / "summit.yaml")).name == "mine"


@pytest.mark.parametrize("name", PACKAGED)
def test_yaml_round_trip(name):
    spec = load_spec(name)
    again = parse_spec(spec.to_yaml(), "again.yaml")
    assert again == spec
    assert parse_spec(again.to_yaml()) == again


def test_summary_names_key_figures():
    text = spec_summary(load_spec("summit"))
    assert "4,608" in text and "V100" in text and "fat-tree" in text and "42 total" in text
    assert "defaults (not measured)" in spec_summary(detect_machine())


# ------------------------------------------------------------------ errors


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    "old, new, message, needle",
    [
        (
            "capacity_gb: 16", "capacity_gb: abc",
            "nodes.memory.capacity_gb: expected a positive number, got 'abc'", "capacity_gb: abc",
        ),
        (
            "bandwidth_gb_per_s: 50", "bandwidth_gb_per_s: -5",
            "nodes.memory.bandwidth_gb_per_s: expected a positive number, got -5",
            "bandwidth_gb_per_s: -5",
        ),
        (
            "cores_per_socket: 8", "cores_per_socket: 8.5",
            "nodes.cpu.cores_per_socket: expected a positive integer, got 8.5", "cores_per_socket",
        ),
        (
            "sockets: 1", "sockets: true",
            "nodes.cpu.sockets: expected a positive integer, got true", "sockets: true",
        ),
        (
            "    kind: LPDDR5\n", "    kind: LPDDR5\n    speed: 3\n",
            "nodes.memory.speed: unknown field (allowed: kind, capacity_gb, bandwidth_gb_per_s)",
            "speed: 3",
        ),
        (
            "    clock_ghz: 3.0\n", "",
            "nodes.cpu.clock_ghz: missing required field", "  cpu:",
        ),
        (
            "topology: loopback", "topology: mesh",
            "network.topology: expected one of 'fat-tree', 'dragonfly', 'torus', 'ethernet', "
            "'loopback' or 'other'; got 'mesh'",
            "topology: mesh",
        ),
        (
            "    kind: LPDDR5\n", "    kind: LPDDR5\n    kind: DDR4\n",
            "nodes.memory.kind: duplicate key", "kind: DDR4",
        ),
        (
            "  count: 1\n", "  count: [1\n",
            "invalid YAML: expected ',' or ']', but got ':'", "  cpu:",
        ),
    ],
)
def test_spec_errors_name_field_and_line(tmp_path, old, new, message, needle):
    assert old in LAPTOP
    text = LAPTOP.replace(old, new, 1)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec("bad.yaml", cwd=tmp_path)
    error = info.value
    assert error.message == message
    assert error.file == "bad.yaml"
    assert error.line == _line_of(text, needle)
    assert error.cli_line() == f"error: bad.yaml:{error.line}: {message}"


def test_several_errors_report_the_first_and_count_the_rest():
    text = LAPTOP.replace("capacity_gb: 16", "capacity_gb: abc")
    text = text.replace("clock_ghz: 3.0", "clock_ghz: 0")
    with pytest.raises(SpecError) as info:
        parse_spec(text, "x.yaml")
    assert info.value.message == (
        "nodes.cpu.clock_ghz: expected a positive number, got 0 (and 1 more problem)"
    )


def test_empty_and_non_mapping_files():
    with pytest.raises(SpecError, match="got an empty file"):
        parse_spec("", "empty.yaml")
    with pytest.raises(SpecError, match="got a list"):
        parse_spec("- 1\n", "list.yaml")


def test_unknown_spec_name(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec("sumit", cwd=tmp_path)
    assert info.value.message == (
        "unknown hardware spec 'sumit' (packaged specs: cloud_a100, frontier, laptop, summit; "
        "or give a YAML path)"
    )


def test_numbers_pyyaml_reads_as_strings_are_accepted():
    spec = parse_spec(LAPTOP.replace("capacity_gb: 16", "capacity_gb: 16e0"))
    assert spec.nodes.memory.capacity_gb == 16.0


# ------------------------------------------------------------------ detection


def test_detect_machine_counts_usable_cores(tmp_path):
    spec = detect_machine(cwd=tmp_path)
    # usable cores: the CPUs this process may run on (== os.cpu_count() without pinning)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert spec.total_cores == usable
    assert spec.nodes.count == 1 and spec.network.topology == "loopback"
    assert spec.nodes.memory.capacity_gb > 0 and spec.nodes.disks[0].capacity_gb > 0
    assert spec.sources["nodes.memory.bandwidth_gb_per_s"] == "default"
    assert "defaults, not measurements" in spec.description
    assert parse_spec(spec.to_yaml()) == spec


def test_detect_machine_reads_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    row = "echo 'NVIDIA A100-SXM4-80GB, 81920 MiB'\n"
    fake.write_text("#!/bin/sh\n" + row + row)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus = detect_machine(cwd=tmp_path).nodes.gpus
    assert gpus.count == 2 and gpus.kind == "NVIDIA A100-SXM4-80GB"
    assert gpus.memory_gb == pytest.approx(85.9, abs=0.1)  # 81920 MiB in 10^9 bytes
    assert gpus.memory_bandwidth_gb_per_s == 2039


# ------------------------------------------------------------------ machine dialect


@pytest.mark.parametrize("name", PACKAGED)
def test_machine_ops_verify_and_read_back(name):
    spec = load_spec(name)
    module = _module(spec)
    module.verify()
    assert spec_from_machine_ops(module) == spec
    text = _print(module)
    assert f'loc("{name}.yaml":' in text
    reparsed = _parse(text)
    reparsed.verify()
    assert spec_from_machine_ops(reparsed) == spec


def test_calibration_survives_the_ir():
    spec = load_spec("laptop")
    spec.calibration = {"sort": {"rows_per_s": 1.4e7, "overhead_s": 0.002}}
    assert spec_from_machine_ops(_parse(_print(_module(spec)))) == spec


def test_negative_bandwidth_is_rejected_naming_the_op():
    module = _module(load_spec("summit"))
    memory = next(op for op in module.ops if isinstance(op, MemoryOp))
    memory.attributes["bandwidth_gb_per_s"] = FloatAttr(-1.0, f64)
    with pytest.raises(VerifyException) as info:
        module.verify()
    assert str(info.value).startswith("'machine.memory' at summit.yaml:")
    assert "bandwidth_gb_per_s must be positive, got -1.0" in str(info.value)


def test_component_needs_its_system():
    ops = build_machine_ops(load_spec("laptop"))
    module = ModuleOp([op for op in ops if op.name != "machine.system"])
    with pytest.raises(VerifyException, match="no machine.system named 'laptop'"):
        module.verify()


def test_system_needs_each_required_component_once():
    ops = build_machine_ops(load_spec("laptop"))
    module = ModuleOp([op for op in ops if op.name != "machine.network"])
    with pytest.raises(VerifyException, match="needs exactly one machine.network, found 0"):
        module.verify()


def test_bad_link_ends_and_int_width():
    module = _module(load_spec("summit"))
    link = next(op for op in module.ops if op.name == "machine.link")
    link.attributes["between"] = StringAttr("gpu-disk")
    with pytest.raises(VerifyException, match="between must be one of cpu-gpu, gpu-gpu, cpu-cpu"):
        module.verify()
    module = _module(load_spec("summit"))
    system = next(op for op in module.ops if op.name == "machine.system")
    system.attributes["nodes"] = IntegerAttr(0, i64)
    with pytest.raises(VerifyException, match="'machine.system' .*nodes must be positive, got 0"):
        module.verify()


def test_reading_a_module_without_machine():
    with pytest.raises(IRError, match="no machine.system op in the module"):
        spec_from_machine_ops(ModuleOp([]))


def test_dlti_export():
    attr = dlti_system_spec(load_spec("summit"))
    assert attr["CPU"]["num_cores"] == IntegerAttr(42, i64)
    assert attr["GPU"]["num_devices"] == IntegerAttr(6, i64)
    assert attr["GPU"]["memory_size_in_bytes"] == IntegerAttr(16 * GB, i64)
    text = _print(_module(load_spec("summit")))
    assert f"{DLTI_ATTR} = #dlti.target_system_spec<\"CPU\" = #dlti.target_device_spec<" in text
    assert '"num_cores" = 42 : i64' in text
    assert "GPU" not in str(dlti_system_spec(load_spec("laptop")))


# ------------------------------------------------------------------ upstream MLIR


def _minimal_irdl() -> str:
    """IRDL of the machine dialect built from the op definitions: required attributes
    with base constraints (optional ones pass as extra attributes upstream)."""
    lines = ["irdl.dialect @machine {"]
    for op in Machine.operations:
        definition = op.get_irdl_definition()
        lines.append(f"  irdl.operation @{op.name.split('.', 1)[1]} {{")
        names = []
        for i, (key, attr) in enumerate(definition.attributes.items()):
            if isinstance(attr, OptAttributeDef):
                continue
            lines.append(f"    %v{i} = irdl.any")
            names.append(f'"{key}" = %v{i}')
        lines.append("    irdl.attributes {" + ", ".join(names) + "}")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


_UPSTREAM_CHECK = textwrap.dedent(
    """
    import sys
    from torch_mlir import ir
    from torch_mlir.dialects import irdl
    ctx = ir.Context()
    ctx.allow_unregistered_dialects = False
    irdl.load_dialects(ir.Module.parse(open(sys.argv[1]).read(), ctx))
    for path in sys.argv[2:]:
        module = ir.Module.parse(open(path).read(), ctx)
        assert module.operation.verify()
        assert "dlti.target_system_spec" in module.operation.attributes
    print("upstream ok")
    """
)


def _check_upstream(irdl_path: Path, files: list[Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _UPSTREAM_CHECK, str(irdl_path), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "upstream ok" in result.stdout


def _write_modules(tmp_path: Path) -> list[Path]:
    files = []
    specs = [load_spec(n) for n in PACKAGED] + [detect_machine(cwd=tmp_path)]
    specs[-1].calibration = {"sort": {"rows_per_s": 1.0e7}}
    for spec in specs:
        path = tmp_path / f"{spec.name}.mlir"
        path.write_text(_print(_module(spec)))
        files.append(path)
    return files


def test_printed_machine_ir_parses_in_upstream_mlir(tmp_path):
    irdl_path = tmp_path / "machine.irdl.mlir"
    irdl_path.write_text(_minimal_irdl())
    _check_upstream(irdl_path, _write_modules(tmp_path))


@pytest.mark.skipif(
    not (REPO / "dialects" / "machine.irdl.mlir").exists(), reason="IRDL twin not generated yet"
)
def test_printed_machine_ir_parses_with_the_irdl_twin(tmp_path):
    _check_upstream(REPO / "dialects" / "machine.irdl.mlir", _write_modules(tmp_path))
