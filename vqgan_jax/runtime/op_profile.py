"""Where a compiled step spends its time: CPU time by model part and op kind, from a trace.

XLA's CPU runtime records one profiler event per executed HLO instruction (a fusion, a
convolution, a copy) on its worker threads, named as the instruction is named in the compiled
module. The module's text gives each instruction its source (`metadata={op_name=...}`: the jit,
the transforms and the flax module path, plus any `jax.named_scope`). Joining the two gives
CPU-seconds per step by part (encoder, decoder, quantizer, LPIPS, discriminator, optimizer,
...), pass (forward or backward) and kind (conv/matmul, elementwise, reduction,
copy/transpose). No profiler plugin is needed: the trace is Perfetto JSON.

    rows = profile_step(compiled, lambda: args, hlo_text=compiled.as_text(), steps=3)
    print(format_profile(table))
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Any, Callable, Iterable

import jax

# (part, regex on an instruction's op_name), first match wins.
PARTS = (
    ("lpips", re.compile(r"LPIPS|lpips|VGG")),
    ("discriminator", re.compile(r"NLayerDiscriminator|discriminator")),
    ("quantizer", re.compile(r"quantizer|codebook")),
    ("encoder", re.compile(r"/encoder/|quant_conv")),
    ("decoder", re.compile(r"/decoder/|post_quant_conv")),
    ("optimizer", re.compile(r"optimizer")),
    ("nonfinite_guard", re.compile(r"nonfinite_guard")),
)
# Control flow whose events enclose the events of the instructions it runs.
_ENCLOSING = frozenset({"while", "conditional", "call", "async-start", "async-done"})
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[^\s=]+) = (?P<rest>.*)$")
_OPCODE = re.compile(r"(?:^|[\s)}\]])(?P<opcode>[a-z][a-z0-9\-_]*)\(")
_CALLS = re.compile(r"calls=%(?P<callee>[^\s,)]+)")
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]*)"')
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%(?P<name>[^\s(]+)\s*\(.*\{\s*$")


@dataclasses.dataclass
class Instruction:
  name: str
  opcode: str
  op_name: str
  callee: str
  shape: str


def parse_hlo(text: str) -> tuple[dict[str, Instruction], dict[str, list[Instruction]]]:
  """Instructions of an HLO module's text by name, and each computation's instructions."""
  instructions, computations, current = {}, collections.defaultdict(list), ""
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header and " = " not in line:
      current = header.group("name")
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    rest = match.group("rest")
    opcode = _OPCODE.search(rest)
    op_name, callee = _OP_NAME.search(rest), _CALLS.search(rest)
    inst = Instruction(name=match.group("name"), opcode=opcode.group("opcode") if opcode else "",
                       op_name=op_name.group("op_name") if op_name else "",
                       callee=callee.group("callee") if callee else "",
                       shape=rest.split(" ", 1)[0])
    instructions[inst.name] = inst
    computations[current].append(inst)
  return instructions, computations


def _opcodes_inside(inst: Instruction, computations, depth: int = 0) -> set[str]:
  ops = {inst.opcode}
  if inst.callee and depth < 4:
    for inner in computations.get(inst.callee, ()):
      ops |= _opcodes_inside(inner, computations, depth + 1)
  return ops


def _op_name(inst: Instruction, computations) -> str:
  """The instruction's own op_name, else the first one inside the computation it calls."""
  if inst.op_name or not inst.callee:
    return inst.op_name
  for inner in computations.get(inst.callee, ()):
    name = _op_name(inner, computations)
    if name:
      return name
  return ""


def kind_of(inst: Instruction, computations) -> str:
  ops = _opcodes_inside(inst, computations)
  if ops & {"convolution", "dot"}:
    return "conv/matmul"
  if ops & {"reduce", "reduce-window", "select-and-scatter", "scatter", "sort"}:
    return "reduction/scatter"
  if ops <= {"copy", "transpose", "bitcast", "fusion", "parameter", "reshape", "broadcast",
             "slice", "concatenate", "dynamic-slice", "dynamic-update-slice", "pad", "tuple",
             "get-tuple-element", "constant"}:
    return "copy/transpose"
  return "elementwise"


def part_of(op_name: str) -> str:
  for part, pattern in PARTS:
    if pattern.search(op_name):
      return part
  return "other"


def pass_of(op_name: str) -> str:
  return "backward" if "transpose(" in op_name else "forward"


def _trace_events(logdir: str) -> list[dict[str, Any]]:
  paths = glob.glob(os.path.join(logdir, "**", "*perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise RuntimeError(f"The profiler wrote no Perfetto trace under {logdir}.")
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X" and "dur" in e]


def instruction_seconds(events: Iterable[dict[str, Any]], instructions: dict[str, Instruction],
                        steps: int) -> dict[str, float]:
  """CPU-seconds per step of each executed instruction (enclosing control flow excluded)."""
  totals = collections.Counter()
  for event in events:
    inst = instructions.get(event["name"])
    if inst is not None and inst.opcode not in _ENCLOSING:
      totals[inst.name] += event["dur"] * 1e-6 / steps
  return dict(totals)


def profile_step(fn: Callable[..., Any], args_fn: Callable[[], tuple], *, hlo_text: str,
                 steps: int = 3, logdir: str | None = None) -> list[dict[str, Any]]:
  """Runs `fn(*args_fn())` `steps` times under the profiler (`fn` runs the compiled module
  whose text is `hlo_text`; `args_fn` gives each call its arguments, e.g. the state the
  previous call returned when it is donated). Returns one row per (part, pass, kind) with
  CPU-seconds per step and its share, most expensive first, then the most expensive
  instructions as rows with `instruction` set."""
  instructions, computations = parse_hlo(hlo_text)
  logdir = logdir or tempfile.mkdtemp(prefix="op_profile_")
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    for _ in range(steps):
      jax.block_until_ready(fn(*args_fn()))
  seconds = instruction_seconds(_trace_events(logdir), instructions, steps)
  return summarize(seconds, instructions, computations)


def summarize(seconds: dict[str, float], instructions: dict[str, Instruction],
              computations, top: int = 12) -> list[dict[str, Any]]:
  groups = collections.Counter()
  described = []
  for name, secs in seconds.items():
    inst = instructions[name]
    op_name = _op_name(inst, computations)
    key = (part_of(op_name), pass_of(op_name), kind_of(inst, computations))
    groups[key] += secs
    described.append({"instruction": name, "op_name": op_name, "shape": inst.shape,
                      "part": key[0], "pass": key[1], "kind": key[2], "seconds": secs})
  total = sum(groups.values()) or 1.0
  rows = [{"part": p, "pass": ps, "kind": k, "seconds": s, "share": s / total}
          for (p, ps, k), s in groups.most_common()]
  described.sort(key=lambda r: -r["seconds"])
  for row in described[:top]:
    row["share"] = row["seconds"] / total
  return rows + described[:top]


def by_part(rows: list[dict[str, Any]]) -> dict[str, float]:
  """CPU-seconds per step of each part (both passes, every kind)."""
  parts = collections.Counter()
  for row in rows:
    if "instruction" not in row:
      parts[row["part"]] += row["seconds"]
  return dict(parts.most_common())


def format_profile(rows: list[dict[str, Any]]) -> str:
  groups = [r for r in rows if "instruction" not in r]
  lines = [f"{'part':16s} {'pass':9s} {'kind':18s} {'ms/step':>9s} {'share':>6s}"]
  lines += [f"{r['part']:16s} {r['pass']:9s} {r['kind']:18s} {1e3 * r['seconds']:9.1f} "
            f"{100 * r['share']:5.1f}%" for r in groups if r["share"] >= 0.005]
  lines.append("top instructions:")
  lines += [f"  {1e3 * r['seconds']:8.1f} ms {100 * r['share']:5.1f}%  {r['instruction']:28s} "
            f"{r['shape'][:32]:32s} {r['op_name'][-70:]}"
            for r in rows if "instruction" in r]
  return "\n".join(lines)
