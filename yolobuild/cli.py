"""The `yolobuild` command: `[build|validate|plan] [key=value ...] [--multirun] [--config-dir DIR]`.

The edge of the program: parse argv, compose + validate + lower each job, run or print it,
turn every yolobuild error into one line on stderr and its exit code.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USER, UserError, YolobuildError, machine_error, nearest

VERBS = ("build", "validate", "plan", "lock", "toolchain", "inspect", "cache", "init", "schema", "check-recipes", "benchmark")
REPO_COMMANDS = {"init": "cmd_init", "schema": "cmd_schema", "check-recipes": "cmd_check_recipes"}  # repo_cli

HELP = """\
usage: yolobuild [build|validate|plan|lock] [KEY=VALUE ...] [--multirun] [--config-dir DIR] [--locked]
       yolobuild init [--weights PATH|builtin:NAME] [--name NAME] [--from RECIPE]
       yolobuild schema [--output FILE]  |  yolobuild check-recipes FILE...  |  yolobuild --version
       yolobuild toolchain list | install NAME [--force]
       yolobuild inspect model.weights=PATH|builtin:NAME [model.trust_checkpoint=true] [model.source.repo=DIR]
       yolobuild cache verify [--repair] [cache.dir=DIR] | gc [cache.max_size=SIZE] [cache.dir=DIR]
       yolobuild benchmark BUILD_DIR [--runs N] [--warmup N] [--threads N]
       yolobuild report SWEEP_DIR   (a --multirun sweep's summary.json/csv and report.html, from its manifests)

Compose a build from Hydra config groups, validate it, lower it into a plan of ops and run
it through a content-addressed cache. With no arguments: the embedded demo (a YOLOv5n
trained on synthetic shapes) is built for onnxruntime and a summary is printed.

verbs:
  build      (default) run the plan; outputs go to <workspace.path>/<recipe>_<target>_<precision>_<H>x<W>/
  validate   check the composed recipe: every problem on one line, with the file that set it
  plan       print the ops, their fingerprints and cache state; write plan.json
  lock       write yolobuild.lock (at the repo root): each job's recipe keys, input file sha256s, tool
             versions and op fingerprints; `build --locked` exits 3 naming what changed, before it runs
  init       write a recipe for your checkpoint (or random weights) into this repo, inheriting the shipped
             recipe that fits, and the yolobuild.yaml marker at the repo root; never overwrites
  schema     print (or --output FILE) the JSON Schema of a recipe file, for editors and CI
  check-recipes  check recipe files (YAML, schema, the composed build's rules; no torch): the pre-commit hook
  toolchain  list the isolated toolchain environments, or install one (e.g. `toolchain install rknn`);
             builds install what they need on first use (YOLOBUILD_NO_INSTALL=1 turns that off)
  cache      verify: read every cached object and check it against its sha256 (--repair quarantines
             bad ones, so the ops that made them run again; exit 3 when it finds a problem);
             gc: remove what no build reads again (killed builds' folders, unnamed objects, quarantine)
             and, with cache.max_size=20GB, the least recently used entries over that budget
  benchmark  time a build's artifact on this machine's runtimes (ONNX Runtime, OpenVINO on the CPU): p50 / p90
             latency, throughput, batch 1; recorded in manifest.benchmark and the reports (board-only artifacts:
             deploy/benchmark.sh on the board)
  inspect    what a checkpoint holds: family, classes, strides, anchors, input size (imports torch;
             full pickles go through the restricted unpickler, no code from the file runs)

trust: model.source.repo=DIR imports your fork's modules from DIR, and importing a module runs its
  code: name only a folder whose code you trust. The checkpoint may then name the layer and container
  classes those modules define, never a function or a name they re-export. model.trust_checkpoint=true
  unpickles the file as it is: only for files you made yourself.

overrides (Hydra grammar): key=value, +key=value (new key), ~key (delete),
  group choices: recipe=NAME target=NAME precision=NAME dataset=NAME
  common keys: model.weights=PATH|random  input.width=W input.height=H  graph.head=raw|split|decoded
               dataset.calib.path=DIR|LIST dataset.calib.count=N
               dataset.eval.images=DIR dataset.eval.annotations=COCO.json
               workspace.path=DIR  cache.dir=DIR (or YOLOBUILD_CACHE)

options:
  -m, --multirun         sweep comma-separated choices: target=rk3588,bm1684x precision=fp16,int8; each job runs
                         on Hydra's launcher: hydra/launcher=basic (default, one at a time) | joblib
                         hydra.launcher.n_jobs=N | ray | submitit_local | submitit_slurm, or a sweeper such as
                         hydra/sweeper=optuna (extras: yolobuild[joblib], [ray], [slurm], [optuna]). Results:
                         <workspace.path>/sweeps/<time>/ (summary.json, summary.csv, report.html; sweeps/latest)
  -cd, --config-dir DIR  also search DIR for recipe/, target/, precision/, dataset/ (searched first); without
                         it, the config_dir named by the nearest yolobuild.yaml (or [tool.yolobuild] in
                         pyproject.toml) above the current folder, with its workspace and cache defaults
  --locked               build: refuse (exit 3) when the job differs from yolobuild.lock
  --version              print the version
  --allow-env            let recipe files read environment variables (${oc.env:NAME}); without it only
                         the names listed in YOLOBUILD_ALLOW_ENV=A,B may be read. Values read from the
                         environment are replaced by ${oc.env:NAME} in every file yolobuild writes
  -h, --help             this text

progress: in a terminal, a live view of the running ops (images done of N, ETA) and of a sweep's jobs;
  piped or in CI, plain lines (at most one progress line per op every 10 s); YOLOBUILD_PROGRESS=0: off

exit codes: 0 built (or hand-off bundle written), 2 user error (recipe, override, input file),
            3 toolchain or numeric check failed, 4 the machine is in the way (disk full, no permission),
            130 interrupted.
"""


class Output:
    """Plain lines for messages; rich for the summary table and, in a terminal, the live view of a
    running build (rich costs ~50 ms to import; a pipe or CI log gets plain lines only).

    The stream is bound once: ops running in threads may swap sys.stdout while they silence a tool."""

    def __init__(self):
        self.stream = sys.stdout

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def watch(self, name: str, ops: int):
        """What shows a build while it runs (yolobuild.live): a live view in a terminal, else plain lines."""
        from .live import BuildView, terminal_console
        from .progress import shown

        return BuildView(self.say, name, ops, console=terminal_console(self.stream), progress_lines=shown())

    def table(self, table) -> None:
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True)
        if not console.is_terminal:
            console.width = 160
        console.print(table)


class Args:
    def __init__(self, verb: str, overrides: list[str], multirun: bool, config_dirs: list[str], help: bool,
                 allow_env: bool = False):
        self.verb, self.overrides, self.multirun, self.config_dirs, self.help = verb, overrides, multirun, config_dirs, help
        self.allow_env = allow_env
        self.locked = False


def parse_args(argv: list[str]) -> Args:
    verb, overrides, multirun, dirs, want_help, allow_env = "build", [], False, [], False, False
    locked = "--locked" in argv
    argv = [a for a in argv if a != "--locked"]
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            want_help = True
        elif a == "--allow-env":
            allow_env = True
        elif a in ("-m", "--multirun"):
            multirun = True
        elif a in ("-cd", "--config-dir") or a.startswith("--config-dir="):
            if "=" in a:
                dirs.append(a.split("=", 1)[1])
            else:
                if i + 1 >= len(argv):
                    raise UserError(f"{a}: needs a folder (command line)")
                i += 1
                dirs.append(argv[i])
        elif a.startswith("-") and "=" not in a:
            raise UserError(f"{a}: unknown option{nearest(a, ['--multirun', '--config-dir', '--allow-env', '--help', '--locked'])}; "
                            "see yolobuild --help")
        elif i == 0 and "=" not in a and not a.startswith(("~", "+")):
            if a not in VERBS:
                raise UserError(f"{a}: unknown verb{nearest(a, VERBS)}; allowed: {', '.join(VERBS)} (command line)")
            verb = a
        else:
            overrides.append(a)
        i += 1
    args = Args(verb, overrides, multirun, dirs, want_help, allow_env)
    args.locked = locked
    if locked and verb != "build":
        raise UserError(f"--locked: only for build, not {verb} (command line)")
    return args


def _help_text(config_dirs) -> str:
    from .compose import GROUPS, options

    lines = [HELP, "available choices:"]
    for g in GROUPS:
        lines.append(f"  {g}: {', '.join(options(g))}")
        for d in config_dirs:   # the repo's own (or --config-dir's), beside the shipped ones
            mine = sorted(p.stem for p in (Path(d) / g).glob("*.yaml"))
            if mine:
                lines.append(f"  {g} ({d}): {', '.join(mine)}")
    return "\n".join(lines)


def _jobs(args: Args) -> list[list[str]]:
    if not args.multirun:
        if any(_has_sweep(o) or "(" in o for o in args.overrides):  # range()/choice() sweeps too
            from .compose import parse_overrides

            typed = [o for o in args.overrides if not o.startswith("repo-default:")]
            sweeps = [o.input_line for o in parse_overrides(typed) if o.is_sweep_override()]
            if sweeps:
                raise UserError(f"{sweeps[0]}: a sweep needs --multirun (command line)")
        return [args.overrides]
    from .compose import expand_sweep

    return expand_sweep([o for o in args.overrides if not _is_hydra_override(o)])


def _is_hydra_override(override: str) -> bool:
    """`hydra/launcher=joblib`, `hydra.launcher.n_jobs=2`: the sweep's own settings, never a job's."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _prepare(overrides, config_dirs, allow_env: bool = False):
    """Compose + validate (or reuse the memoised composition), then lower."""
    from . import compose_memo
    from .plan.lower import lower
    from .validate import filesystem_problems, freeze, thaw, validate

    key, cached = compose_memo.load(overrides, config_dirs)
    if cached is not None and not filesystem_problems(cached):
        config = freeze(cached)
    else:
        from .compose import compose

        config = validate(compose(overrides, config_dirs, allow_env))
        compose_memo.store(overrides, key, thaw(config))
    return config, lower(config)


def _has_sweep(override: str) -> bool:
    """A comma outside brackets and quotes in the value: Hydra's sweep syntax."""
    if "=" not in override:
        return False
    depth, quote = 0, None
    for ch in override.split("=", 1)[1]:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def _print_errors(err: UserError, prefix: str = "") -> None:
    for line in err.lines:
        print(f"error: {prefix}{line}", file=sys.stderr)


def _cmd_validate(config, plan, out) -> int:
    c = config
    out.say(f"ok: {plan.name}  (recipe {c['recipe']}, target {c['target']['name']} via {c['backend']['toolchain']}, "
              f"precision {c['precision']['name']}, input {c['input']['height']}x{c['input']['width']}, "
              f"head {c['graph']['head']})")
    _notes(config, plan, out)
    return EXIT_OK


def _notes(config, plan, out) -> None:
    from .compose import MISSING
    from .validate import WEIGHTS_UNSET

    if config["model"]["weights"] == MISSING:
        out.say(f"note: {WEIGHTS_UNSET} before building")
    for note in plan.notes:
        out.say(f"note: {note}")


def _cmd_plan(config, plan, out) -> int:
    import json

    from .engine.build import _previous_keys, build_dir_for, cache_for, plan_json
    from .engine.cache import write_atomic
    from .engine.runner import Runner

    build_dir = build_dir_for(config, plan)
    records = Runner(cache_for(config), _previous_keys(build_dir)).dry_run(plan)
    out.say(f"plan {plan.name}: {len(records)} ops")
    for i, rec in enumerate(records, 1):
        op = rec.op
        ins = ", ".join(f"{k}={r.describe(short=True)}" for k, r in op.inputs.items()) or "-"
        state = "cached" if rec.status == "cached" else rec.reason
        out.say(f"{i:>3}. {op.id:<17} [{op.env}] {ins} -> {', '.join(op.outputs)}")
        out.say(f"     fingerprint {rec.fingerprint[:16] if rec.fingerprint else '-':<16}  {state}")
        if op.params:
            out.say(f"     params {json.dumps(op.params, separators=(',', ':'))}")
    _notes(config, plan, out)
    fps = {rec.op.id: rec.fingerprint for rec in records}
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(build_dir / "plan.json", plan_json(plan, fps, build_dir))
    except OSError as exc:
        raise UserError(f"workspace.path: cannot write {build_dir} ({exc.strerror})") from None
    out.say(f"wrote {build_dir / 'plan.json'}")
    return EXIT_OK


def _cmd_build(config, plan, out) -> tuple[int, dict]:
    from .accuracy.search import run as run_build   # one build, or the accuracy.* search's builds
    from .compose import MISSING
    from .validate import WEIGHTS_UNSET

    if config["model"]["weights"] == MISSING:
        raise UserError(f"{WEIGHTS_UNSET} (command line)")
    if config["model"]["weights"] == "random":
        out.say("WARNING: model.weights=random: random weights — this checks the pipeline, "
                "not a trained detector")
    out.say(f"building {plan.name}")
    for note in plan.notes:
        out.say(f"note: {note}")
    with out.watch(plan.name, len(plan.ops)) as view:
        result = run_build(config, plan, view.on_op, view.listener, say=out.say)
    if result.exit_code == EXIT_INTERRUPTED:
        print(f"interrupted: {result.message}", file=sys.stderr)
        return result.exit_code, {}
    if result.exit_code != EXIT_OK:
        print(f"error: {result.message}", file=sys.stderr)
    m = result.manifest
    m["_dir"] = str(result.build_dir)
    for kept in m.get("kept_edits") or []:
        out.say(f"note: {result.build_dir}/{kept}")
    return result.exit_code, m


def _summary(rows: list[dict], out) -> None:
    from rich.table import Table

    from .live import saved
    from . import accuracy_figures

    table = Table(title="yolobuild summary", title_justify="left")
    for col in ("build", "status", "ops ran/cached", "time saved", "parity (min cosine)", "mAP50-95 torch→built",
                "output"):
        table.add_column(col)
    for m in rows:
        ops = m.get("ops", [])
        ran = sum(o["status"] in ("ran", "handoff") for o in ops)
        cached = sum(o["status"] == "cached" for o in ops)
        saving = saved(sum(o.get("seconds") or 0.0 for o in ops if o["status"] == "cached")) if cached else "-"
        parity = m.get("parity") or {}
        min_cos = min((v["cosine"] for v in parity.values()), default=None)
        acc = accuracy_figures.cell(accuracy_figures.accuracy(m))
        table.add_row(m.get("build", "?"), m.get("status", "?"), f"{ran}/{cached}", saving,
                      f"{min_cos:.6f}" if min_cos is not None else "-", acc, m.get("_dir", ""))
    out.table(table)


def _cmd_toolchain(argv: list[str], out) -> int:
    """`yolobuild toolchain list` | `yolobuild toolchain install NAME [--force]`."""
    from .toolchains import envs

    if not argv or argv[0] not in ("list", "install"):
        raise UserError("toolchain: say `yolobuild toolchain list` or `yolobuild toolchain install NAME` (command line)")
    if argv[0] == "list":
        for row in envs.listing():
            out.say(f"{row['toolchain']:<16} {row['state']:<14} install name: {row['install name']:<10} "
                    f"{row['versions'] or '-'}\n{'':<16} {row['path']}")
        return EXIT_OK
    names = [a for a in argv[1:] if not a.startswith("-")]
    if len(names) != 1:
        raise UserError("toolchain install: name one toolchain, e.g. `yolobuild toolchain install rknn` (command line)")
    try:
        spec = envs.find_spec(names[0])
    except YolobuildError as exc:
        raise UserError(f"toolchain install: {exc} (command line)") from None
    envs.install(spec, progress=lambda m: out.say(f"  {m}"), force="--force" in argv)
    return EXIT_OK


def _cmd_inspect(argv: list[str], out) -> int:
    """`yolobuild inspect model.weights=PATH [model.trust_checkpoint=true] [model.source.repo=DIR]`."""
    import json

    kv = dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a)
    unknown = sorted(set(kv) - {"model.weights", "model.trust_checkpoint", "model.source.repo"})
    if unknown or "model.weights" not in kv or any("=" not in a for a in argv):
        raise UserError("inspect: say `yolobuild inspect model.weights=PATH` "
                        "[model.trust_checkpoint=true] [model.source.repo=DIR] (command line)")
    from .ops.checkpoint import inspect_weights

    from .init_recipe import checkpoint_path

    info = inspect_weights(checkpoint_path(kv["model.weights"]), kv.get("model.trust_checkpoint") == "true",
                           kv.get("model.source.repo"))
    for key, value in info.items():
        out.say(f"{key + ':':<12} {value if isinstance(value, str) else json.dumps(value)}")
    return EXIT_OK


def _cmd_cache(argv: list[str], out) -> int:
    """`yolobuild cache verify [--repair]` | `yolobuild cache gc [cache.max_size=SIZE]`, [cache.dir=DIR]."""
    from .engine.cache import Cache, default_root
    from .engine import upkeep

    if not argv or argv[0] not in ("verify", "gc"):
        raise UserError("cache: say `yolobuild cache verify [--repair]` or `yolobuild cache gc "
                        "[cache.max_size=SIZE]` (command line)")
    kv = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    flags = [a for a in argv[1:] if "=" not in a]
    allowed_keys = {"verify": {"cache.dir"}, "gc": {"cache.dir", "cache.max_size"}}[argv[0]]
    allowed_flags = {"verify": {"--repair"}, "gc": set()}[argv[0]]
    unknown = sorted(set(kv) - allowed_keys) + sorted(set(flags) - allowed_flags)
    if unknown:
        raise UserError(f"cache {argv[0]}: {unknown[0]} is not an option of it{nearest(unknown[0], allowed_keys | allowed_flags)}; "
                        f"allowed: {', '.join(sorted(allowed_keys | allowed_flags))} (command line)")
    cache = Cache(default_root(kv.get("cache.dir")))
    if argv[0] == "verify":
        r = upkeep.verify(cache, repair="--repair" in flags)
        out.say(f"cache {cache.root}: {r.entries} entries, {r.objects} objects checked")
        for sha in r.bad:
            out.say(f"  bad object {sha} (its bytes no longer hash to its name)")
        for sha in r.missing:
            out.say(f"  missing object {sha}")
        for fp in r.unreadable:
            out.say(f"  unreadable entry {fp}")
        if r.dropped:
            out.say(f"  repaired: {len(r.dropped)} entries dropped (their ops run again next build); bad objects quarantined")
        out.say("clean" if r.clean else ("problems found and repaired" if r.dropped else
                                          "problems found: run `yolobuild cache verify --repair`"))
        return EXIT_OK if r.clean or r.dropped else 3
    r = upkeep.gc(cache, upkeep.parse_size(kv.get("cache.max_size")))
    out.say(f"cache {cache.root}: removed {r.tmp_removed} abandoned op folders, {r.objects_removed} unnamed objects, "
            f"{r.quarantine_removed} quarantined, evicted {r.entries_evicted} entries; freed "
            f"{r.bytes_freed / 1e6:.1f} MB, {r.size_after / 1e6:.1f} MB in objects now")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:
        from . import __version__

        print(f"yolobuild {__version__}")
        return EXIT_OK
    if argv and argv[0] in REPO_COMMANDS:
        from . import repo_cli

        try:
            return getattr(repo_cli, REPO_COMMANDS[argv[0]])(argv[1:], Output())
        except UserError as err:
            _print_errors(err)
            return EXIT_USER
    if argv and argv[0] == "cache":
        try:
            return _cmd_cache(argv[1:], Output())
        except UserError as err:
            _print_errors(err)
            return EXIT_USER
    if argv and argv[0] == "report":   # a sweep's summary and report.html, rebuilt from its manifests
        from .sweep.rebuild import report_command

        try:
            return report_command(argv[1:], Output())
        except UserError as err:
            _print_errors(err)
            return EXIT_USER
    if argv and argv[0] == "inspect":
        try:
            return _cmd_inspect(argv[1:], Output())
        except UserError as err:
            _print_errors(err)
            return EXIT_USER
    if argv and argv[0] == "benchmark":
        from .deploy import benchmark_command

        try:
            return benchmark_command.run(argv[1:], Output().say)
        except UserError as err:
            _print_errors(err)
            return EXIT_USER
    if argv and argv[0] == "toolchain":
        try:
            return _cmd_toolchain(argv[1:], Output())
        except UserError as err:
            _print_errors(err)
            return EXIT_USER
        except YolobuildError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            print("interrupted: the environment stays incomplete; the next install starts it over", file=sys.stderr)
            return EXIT_INTERRUPTED
    out = Output()
    try:
        args = parse_args(argv)
        from . import repo

        found = repo.discover()
        typed = len(args.overrides)
        args.config_dirs, args.overrides = repo.apply(found, args.config_dirs, args.overrides)
        repo_defaults = len(args.overrides) - typed   # they come first: job labels show what was typed
        if args.help:
            print(_help_text(args.config_dirs))
            return EXIT_OK
        jobs = _jobs(args)
        if args.multirun and args.verb == "build":   # each job on Hydra's launcher (yolobuild.sweep)
            from .sweep.run import run_sweep

            return run_sweep(args.overrides, args.config_dirs, args.allow_env, out)
    except UserError as err:
        _print_errors(err)
        return EXIT_USER
    worst, rows, locks = EXIT_OK, [], {}
    for overrides in jobs:
        label = " ".join(overrides[repo_defaults:]) if args.multirun else ""
        if label:
            out.say(f"job: {label}")
        try:
            config, plan = _prepare(overrides, args.config_dirs, args.allow_env)
            if args.verb == "validate":
                code = _cmd_validate(config, plan, out)
            elif args.verb == "plan":
                code = _cmd_plan(config, plan, out)
            elif args.verb == "lock":
                from .lockfile import job_entry

                locks[plan.name] = job_entry(config, plan)
                out.say(f"locked {plan.name}: {len(locks[plan.name]['ops'])} ops")
                code = EXIT_OK
            else:
                if args.locked:
                    from .lockfile import check, lock_path

                    check(config, plan, lock_path(found.root if found else None))
                code, manifest = _cmd_build(config, plan, out)
                if manifest:
                    rows.append(manifest)
        except UserError as err:
            _print_errors(err, f"[{label}] " if label else "")
            code = EXIT_USER
        except YolobuildError as err:
            for line in getattr(err, "lines", None) or [str(err)]:
                print(f"error: {line}", file=sys.stderr)
            code = err.exit_code
        except OSError as exc:   # the machine in the way (disk full, permissions): one line, exit 4
            err = machine_error(exc, "writing the build")
            if err is None:
                raise
            print(f"error: {err}", file=sys.stderr)
            code = err.exit_code
        except KeyboardInterrupt:
            print("interrupted: finished ops stay cached", file=sys.stderr)
            return EXIT_INTERRUPTED
        if code == EXIT_INTERRUPTED:
            return code
        worst = max(worst, code)
    if args.verb == "lock" and worst == EXIT_OK:
        from .lockfile import lock_path, write

        path = lock_path(found.root if found else None)
        write(locks, path)
        out.say(f"wrote {path}")
    if rows:
        _summary(rows, out)
        for m in rows:  # a hand-off build ends saying what to run next, and where
            from .engine.build import next_step

            step = next_step(m, Path(m["_dir"]))
            if m.get("status") == "handoff" and step:
                out.say(f"next: {step}")
    return worst


def entry() -> None:
    """The console script. Ends with os._exit once the output is flushed: everything main() writes is
    closed by then, and the interpreter's teardown (torch, onnxruntime) would add ~0.8 s to every
    build (measured) for nothing."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
