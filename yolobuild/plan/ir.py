"""The plan IR: typed ops wired by named artifacts. Plain data, no torch."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ref:
    """Where an op input comes from: another op's output, or a user file / image set."""

    op: str | None = None       # producing op id
    output: str | None = None   # that op's output name
    path: str | None = None     # absolute path of an external input
    kind: str = "file"          # external kind: file | images (folder or list file) | unset

    def describe(self, short: bool = False) -> str:
        if self.op:
            return f"{self.op}.{self.output}"
        if self.path is None:
            return self.kind
        return f"{self.kind}:{self.path.rsplit('/', 1)[-1] if short else self.path}"


@dataclass(frozen=True)
class Op:
    id: str
    kind: str
    params: dict[str, Any]
    inputs: dict[str, Ref]
    outputs: tuple[str, ...]
    env: str = "host"                      # host, or the isolated environment that runs it
    toolchain: str | None = None           # set for toolchain steps (quantize, compile, simulate, handoff)
    tools: tuple[str, ...] = ()            # distributions whose versions key the op
    version: int = 1
    final: tuple[str, ...] = field(default=())  # outputs copied into the build folder
    impl: str | None = None                # "module:function" that runs it (toolchain steps; host ops: ops table)
    code: tuple[str, ...] = ()             # source files / folders it runs (import-root relative): keyed by content


@dataclass(frozen=True)
class Plan:
    name: str                 # <recipe>_<target>_<precision>_<H>x<W>
    ops: tuple[Op, ...]
    status_if_done: str       # "compiled" or "handoff"
    notes: tuple[str, ...] = ()  # what lowering left out, and why

    def op(self, op_id: str) -> Op:
        for o in self.ops:
            if o.id == op_id:
                return o
        raise KeyError(op_id)

    def to_dict(self, fingerprints: dict[str, str | None] | None = None) -> dict[str, Any]:
        fps = fingerprints or {}
        return {
            "name": self.name,
            "notes": list(self.notes),
            "ops": [
                {
                    "id": o.id, "kind": o.kind, "env": o.env, "toolchain": o.toolchain, "version": o.version,
                    "params": o.params,
                    "inputs": {k: asdict(v) for k, v in o.inputs.items()},
                    "outputs": list(o.outputs),
                    "tools": list(o.tools),
                    "fingerprint": fps.get(o.id),
                }
                for o in self.ops
            ],
        }

    def to_json(self, fingerprints=None) -> str:
        return json.dumps(self.to_dict(fingerprints), indent=2, sort_keys=False)
