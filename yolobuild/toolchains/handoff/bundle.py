"""Hand-off bundles: everything up to a proprietary compiler, done for real, in one folder.

One mechanism for every vendor whose compiler cannot run here (Cambricon genoff, VastAI vamc,
RKNN-Toolkit 1.x, Sophgo tpu-nntc). The `handoff` step of each vendor package is
`run(ctx, VENDOR)`; a vendor package only holds its differences (a `Vendor` record: its file
renderers, how to find its tool). Its options arrive checked and complete: validate merged the
schema defaults (toolchain.yaml `options` plus handoff/options.yaml) with the recipe's choices.

What this module does for all of them:
- write the calibration set as PNG canvases already letterboxed to the network input (so any
  resize/pad step of the vendor tool is an identity), with `dataset.txt` and
  `calib/preprocess.json` saying the exact remaining preprocessing;
- render README.md (SDK, docker, the one command, what to expect), run.sh (shared header plus the
  vendor's steps), labels.txt and bundle.json (every file with its sha256);
- check its own output: every YAML/JSON file against the vendor-format schema in
  `vendor_schemas/`, every Python script through `compile()`;
- look for the vendor tool when the op runs (never while validating or planning: a configured
  vendor python is started to check it), and when it is there run `run.sh` with it instead of
  stopping at the bundle; the op's results and the manifest say what was found. The toolchain's
  `tools` list (e.g. `path:vamc`) keys the op on the tool's presence, so finding one reruns it.

Every file is a pure function of the op params and input artifacts: no timestamps, no host paths.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...errors import ToolchainError, UserError

BUNDLE_FORMAT = "yolobuild-handoff/1"
PREVIEW_LABEL = "preview, not the vendor compiler"


# --------------------------------------------------------------------------- the bundle

@dataclass
class Bundle:
    """What a vendor renderer sees and fills: params, options, model metadata, files to write."""

    params: dict
    options: dict
    meta: dict
    inputs: dict[str, Path]
    files: dict[str, bytes] = field(default_factory=dict)
    executable: set = field(default_factory=set)
    calib_files: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)      # run.sh body lines (after the shared header)
    expects: list[str] = field(default_factory=list)    # what the vendor run leaves behind
    readme: list[str] = field(default_factory=list)     # vendor paragraphs for README.md
    results: dict = field(default_factory=dict)

    # -- derived facts every vendor uses
    @property
    def height(self) -> int:
        return int(self.params["height"])

    @property
    def width(self) -> int:
        return int(self.params["width"])

    @property
    def batch(self) -> int:
        return int(self.params.get("batch", 1))

    @property
    def precision(self) -> str:
        return self.params["precision"]

    @property
    def name(self) -> str:
        """A file-system-safe network name: <recipe>_<target>_<precision>."""
        raw = self.params.get("name") or "model"
        return "".join(c if c.isalnum() or c in "_-" else "_" for c in raw)

    @property
    def scale(self) -> float:
        return float(self.params.get("scale", 1 / 255.0))

    # -- writers
    def text(self, rel: str, content: str, executable: bool = False) -> None:
        if not content.endswith("\n"):
            content += "\n"
        self.files[rel] = content.encode()
        if executable:
            self.executable.add(rel)

    def json(self, rel: str, obj: Any) -> None:
        self.text(rel, json.dumps(obj, indent=2))

    def yaml(self, rel: str, obj: Any, header: str = "") -> None:
        import yaml

        body = yaml.safe_dump(obj, sort_keys=False, default_flow_style=None, width=120)
        self.text(rel, (header + "\n" if header else "") + body)

    def copy(self, rel: str, src: Path) -> None:
        self.files[rel] = Path(src).read_bytes()


@dataclass(frozen=True)
class Vendor:
    toolchain: str
    title: str                      # "Cambricon MLU (torch_mlu 1.x + genoff)"
    sdk: str                        # the SDK versions the bundle is written for
    render: Callable[[Bundle], None]
    schemas: dict[str, str] = field(default_factory=dict)   # bundle file -> vendor schema file
    schemas_dir: Path | None = None                         # the vendor package's schema folder
    detect: Callable[[dict], str] | None = None             # options -> "absent" | what was found


# --------------------------------------------------------------------------- calibration list

def write_calibration(b: Bundle, folder: str = "calib") -> None:
    """calib.npz canvases -> calib/NNNN.png (RGB, letterboxed to HxW) + dataset.txt + preprocess.json."""
    if "calib" not in b.inputs:
        return
    import io

    from PIL import Image

    from ...runtime.arrays import load_npz

    canvases = load_npz(b.inputs["calib"])["images"]
    if not len(canvases):
        raise UserError("dataset.calib: the calibration set is empty")
    names = []
    for i, canvas in enumerate(canvases):
        buf = io.BytesIO()
        Image.fromarray(canvas, "RGB").save(buf, format="PNG", optimize=False, compress_level=6)
        rel = f"{folder}/images/{i:04d}.png"
        b.files[rel] = buf.getvalue()
        names.append(rel)
    b.calib_files = names
    b.text("dataset.txt", "\n".join(names))  # beside run.sh: relative to the folder the tools run in
    p = b.params
    b.json(f"{folder}/preprocess.json", {
        "images": len(names),
        "size": {"height": b.height, "width": b.width},
        "already_done": f"letterbox to {b.height}x{b.width} (resize keeping aspect ratio, centred, "
                        f"pad value {p.get('pad_value', 114)}), RGB channel order",
        "remaining": f"x * {b.scale!r} (mean 0, std {1 / b.scale:.6g}), NCHW float32",
        "color": p.get("color", "rgb"),
        "scale": b.scale,
        "pad_value": p.get("pad_value", 114),
        "note": "the vendor tool's own resize / pad steps are identities on these images",
    })


# --------------------------------------------------------------------------- README / run.sh

RUN_HEADER = """#!/usr/bin/env bash
# Generated by yolobuild from the composed config; run inside the vendor docker: bash run.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
"""


def render_run_sh(b: Bundle) -> str:
    lines = [RUN_HEADER.rstrip("\n")]
    lines += b.steps
    lines.append('echo "yolobuild hand-off: done; outputs: ' + " ".join(b.expects) + '"')
    return "\n".join(lines) + "\n"


def render_readme(vendor: Vendor, b: Bundle, files: list[str]) -> str:
    p = b.params
    out = [
        f"# Hand-off bundle: {b.name} for {p.get('platform')} ({vendor.title})",
        "",
        "Generated by yolobuild from the composed config. **Nothing in this folder was compiled by "
        "yolobuild**: the vendor compiler is proprietary and runs only in the vendor's docker.",
        "",
        "## Run (inside the vendor docker, from this folder)",
        "",
        "```",
        "bash run.sh",
        "```",
        "",
        "That is the one command. `PYTHON=/path/to/python bash run.sh` picks another interpreter.",
        "",
        "## Written for",
        "",
        f"- SDK: {vendor.sdk}",
        f"- docker: {b.options.get('docker', 'the vendor SDK docker')}",
        f"- target: {p.get('platform')}, precision {b.precision}, input {b.batch}x3x{b.height}x{b.width}, "
        f"head `{p.get('head')}`",
        "",
        "## Expect",
        "",
        *[f"- `{e}`" for e in b.expects],
        "",
        *b.readme,
    ]
    if b.calib_files:
        out += ["## Calibration set", "",
                f"{len(b.calib_files)} images in `calib/images/`, listed in `dataset.txt`. They are already "
                f"letterboxed to {b.height}x{b.width} (pad {p.get('pad_value', 114)}) in RGB order; what remains is "
                f"x * {b.scale:.9g}. `calib/preprocess.json` says the same for scripts.", ""]
    out += ["## Files", "", *[f"- `{f}`" for f in files], ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- self-checks

def check_bundle(vendor: Vendor, files: dict[str, bytes]) -> None:
    """Generated vendor files must parse and match the vendor format's schema; scripts must compile."""
    import yaml
    from jsonschema import Draft202012Validator

    for rel, schema_name in vendor.schemas.items():
        if rel not in files:
            continue
        text = files[rel].decode()
        doc = yaml.safe_load(text) if rel.endswith((".yaml", ".yml")) else json.loads(text)
        schema = json.loads((vendor.schemas_dir / schema_name).read_text())
        errors = sorted(Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            raise ToolchainError(f"handoff: generated {rel} does not match {schema_name} at "
                                 f"{'.'.join(map(str, e.path)) or '/'}: {e.message}")
    for rel, data in files.items():
        if rel.endswith(".py"):
            try:
                compile(data.decode(), rel, "exec")
            except SyntaxError as exc:
                raise ToolchainError(f"handoff: generated {rel} does not compile: {exc}") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the vendor tool hook

def which(name: str) -> str | None:
    return shutil.which(name)


def module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def configured_python(options: dict, module: str) -> str | None:
    """'configured: …' when backend.options.vendor_python names a Python that imports `module`.

    A configured interpreter that cannot import the vendor module is not a vendor tool: the
    build stops at the bundle, and says why in the op's results."""
    python = options.get("vendor_python")
    if not python:
        return None
    try:
        proc = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return f"configured: backend.options.vendor_python ({Path(python).name}) imports {module}"


def dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def detect(vendor: Vendor, options: dict) -> str:
    """What vendor tool this machine offers: 'absent' or a short description. Runs when the op
    runs (a configured vendor python is started to check it), never while validating or planning."""
    if vendor.detect is None or os.environ.get("YOLOBUILD_NO_VENDOR_TOOLS"):
        return "absent"
    try:
        return vendor.detect(dict(options or {})) or "absent"
    except Exception:  # a broken probe means no tool, never a failed bundle
        return "absent"


def _run_vendor(b: Bundle, out: Path, ctx, timeout: int) -> dict:
    env = dict(os.environ)
    python = b.options.get("vendor_python")
    if python:
        env["PYTHON"] = str(python)
    log = Path(getattr(ctx, "log_file", None) or Path(ctx.scratch) / "vendor.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "wb") as f:
            proc = subprocess.run(["bash", "run.sh"], cwd=out, env=env, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"handoff: the vendor tool ran past {timeout} s (backend.options.vendor_timeout)") \
            from None
    tail = log.read_text(errors="replace")[-1500:]
    if proc.returncode != 0:
        last = [ln for ln in tail.splitlines() if ln.strip()][-3:]
        raise ToolchainError(f"handoff: run.sh with the vendor tool failed (exit {proc.returncode}): "
                             f"{' | '.join(last)[:400]}")
    missing = [e for e in b.expects if not (out / e).exists()]
    if missing:
        raise ToolchainError(f"handoff: the vendor tool ran but left no {', '.join(missing)}")
    shutil.copyfile(log, out / "vendor.log")
    return {"ran": True, "outputs": [e for e in b.expects]}


# --------------------------------------------------------------------------- the op

def run(ctx, vendor: Vendor) -> None:
    p = ctx.params
    opts = dict(p.get("options") or {})
    meta = json.loads(Path(ctx.inputs["meta"]).read_text())
    b = Bundle(params=p, options=opts, meta=meta, inputs=dict(ctx.inputs))
    write_calibration(b)
    b.text("labels.txt", "\n".join(meta["names"]))
    vendor.render(b)
    b.text("run.sh", render_run_sh(b), executable=True)
    listing = sorted(set(b.files) | {"README.md", "bundle.json"})
    b.text("README.md", render_readme(vendor, b, listing))
    check_bundle(vendor, b.files)
    b.json("bundle.json", {
        "format": BUNDLE_FORMAT,
        "toolchain": vendor.toolchain,
        "sdk": vendor.sdk,
        "platform": p.get("platform"),
        "precision": b.precision,
        "input": {"batch": b.batch, "height": b.height, "width": b.width, "layout": p.get("input_layout")},
        "head": p.get("head"),
        "options": opts,
        "run": "bash run.sh",
        "expects": b.expects,
        "files": {rel: sha256_bytes(data) for rel, data in sorted(b.files.items())},
    })

    out = Path(ctx.outputs["handoff"])
    if out.exists():
        shutil.rmtree(out)
    for rel, data in sorted(b.files.items()):
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        os.chmod(dest, 0o755 if rel in b.executable else 0o644)

    found = detect(vendor, opts)
    vendor_run: dict[str, Any] = {"found": found, "ran": False}
    if found != "absent":
        timeout = int(opts.get("vendor_timeout") or 3600)
        vendor_run.update(_run_vendor(b, out, ctx, timeout))
    ctx.results.update({
        "bundle": {"files": _listing(b), "run": "bash run.sh", "docker": opts.get("docker"),
                   "sdk": vendor.sdk, "expects": b.expects,
                   "calibration_images": len(b.calib_files)},
        "vendor_tool": vendor_run,
        "next": ("the vendor tool ran here; its outputs are in <handoff>" if vendor_run["ran"] else
                 f"copy <handoff> into {opts.get('docker') or 'the vendor docker'} and run there: bash run.sh"),
        **b.results,
    })


def _listing(b: Bundle) -> list[str]:
    """The bundle's files, the calibration images as one line."""
    calib = set(b.calib_files)
    files = [f for f in sorted(b.files) if f not in calib]
    if calib:
        files.append(f"{b.calib_files[0]} .. {b.calib_files[-1]} ({len(calib)} calibration images)")
    return sorted(files)
