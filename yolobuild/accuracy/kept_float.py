"""The kept-float file: the layers a build keeps in higher precision, as a YAML file a user reviews and commits.

    # written by yolobuild's accuracy.max_drop search ...
    toolchain: onnxruntime
    keep_float: [/model.22/cv3.2/cv3.2.2/Conv, ...]

`accuracy.kept_float=FILE` hands the list to the toolchain (backend.options.keep_float): its contents key
the quantize op like any option, so the next build with the same file is cached.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def read(path: str | Path) -> dict:
    """{"toolchain": str | None, "keep_float": [names]}; UserError naming what to fix."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"accuracy.kept_float: {str(path)!r} does not exist; allowed: a YAML file with "
                        "`keep_float: [layer names]` (an accuracy.max_drop build writes one)")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"accuracy.kept_float: {str(path)!r} is not readable YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(data, list):
        data = {"keep_float": data}
    names = data.get("keep_float") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise UserError(f"accuracy.kept_float: {str(path)!r} must hold `keep_float:` and a list of layer names "
                        "(strings)")
    toolchain = data.get("toolchain")
    return {"toolchain": toolchain if isinstance(toolchain, str) else None, "keep_float": list(names)}


def problem(path: str, toolchain: str) -> str | None:
    """One line saying what is wrong with the file for a build on `toolchain`, or None."""
    try:
        data = read(path)
    except UserError as err:
        return str(err).split(": ", 1)[1]
    if data["toolchain"] and data["toolchain"] != toolchain:
        return (f"{path!r} lists {data['toolchain']} layer names; this build's toolchain is {toolchain} "
                "(its layers have other names): search again with accuracy.max_drop")
    return None


def merged(options: dict, path: str | None) -> dict:
    """backend.options with the file's layers added to keep_float (in the file's order, no repeats)."""
    if not path:
        return options
    names = list(dict.fromkeys(list(options.get("keep_float") or ()) + read(path)["keep_float"]))
    return {**options, "keep_float": names}


def write(path: Path, toolchain: str, names: list[str], header: list[str]) -> None:
    import yaml

    body = yaml.safe_dump({"toolchain": toolchain, "keep_float": list(names)}, sort_keys=False, width=100)
    text = "".join(f"# {line}\n" for line in header) + body
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
