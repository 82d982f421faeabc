"""Hand a sweep to Hydra's multirun: its sweeper expands the overrides, its launcher runs the jobs.

Hydra composes a tiny app config (`conf/sweep.yaml`: the hydra node only). The job's own overrides
(`recipe=`, `target=`, `backend.options.*`, ...) are not applied to it: they are handed to the job as
`hydra.overrides.task` and composed there by yolobuild, exactly as a single build composes them
(aliases, a target's default precision, error messages naming the file that set a key)."""
from __future__ import annotations

import functools
from pathlib import Path

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from ..errors import UserError

CONF_DIR = Path(__file__).parent / "conf"
APP_CONFIG = "sweep"

# launcher / sweeper choice -> the extra that installs its plugin
EXTRAS = {"joblib": "joblib", "ray": "ray", "ray_aws": "ray", "submitit_local": "slurm",
          "submitit_slurm": "slurm", "optuna": "optuna", "nevergrad": "nevergrad", "ax": "ax"}


class SweepConfigLoader(ConfigLoaderImpl):
    """Hydra's loader, composing the hydra node only; task overrides pass through as strings.

    A module-level class holding plain data: launchers pickle it into their workers."""

    def __init__(self, config_search_path, sweep_dir: str):
        super().__init__(config_search_path=config_search_path)
        self.sweep_dir = sweep_dir
        self._composed: dict = {}

    def __getstate__(self):
        return {**self.__dict__, "_composed": {}}   # what a worker needs is the recipe, not this process's memo

    def _load_configuration_impl(self, config_name, overrides, run_mode, from_shell=True,
                                 validate_sweep_overrides=True):
        """Every job of a sweep composes the same hydra node (only its task overrides differ): it is
        composed once per process (~0.2 s each time otherwise) and copied."""
        import copy

        parsed = OverridesParser.create().parse_overrides(list(overrides))
        hydra_side = [o.input_line for o in parsed if o.is_hydra_override()]
        task_side = [o.input_line for o in parsed if not o.is_hydra_override()]
        key = (config_name, tuple(hydra_side), run_mode, from_shell, validate_sweep_overrides)
        if key not in self._composed:
            self._composed[key] = super()._load_configuration_impl(config_name, hydra_side, run_mode, from_shell,
                                                                   validate_sweep_overrides)
        cfg = copy.deepcopy(self._composed[key])
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task.extend(task_side)
            cfg.hydra.job.override_dirname = ",".join(task_side)
            if not any(o.startswith("hydra.sweep.dir=") for o in hydra_side):
                cfg.hydra.sweep.dir = self.sweep_dir
        return cfg


def is_hydra_override(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _missing_plugin(exc: Exception, overrides) -> UserError | None:
    """`hydra/launcher=joblib` without the plugin: one line naming the extra that installs it."""
    text = str(exc)
    for ov in overrides:
        key, _, choice = ov.partition("=")
        if key.lstrip("+") in ("hydra/launcher", "hydra/sweeper") and f"{key.lstrip('+')}/{choice}" in text:
            extra = EXTRAS.get(choice)
            fix = f'pip install "yolobuild[{extra}]"' if extra else "install its Hydra plugin"
            return UserError(f"{ov}: the {choice} {key.split('/')[-1]} is not installed; {fix} (command line)")
    return None


def multirun(overrides: list[str], settings: dict, sweep_dir: Path) -> list:
    """Run the sweep; returns Hydra's JobReturns (a list of lists: one per batch)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException

    from .job import run_job

    loader = SweepConfigLoader(create_config_search_path(f"file://{CONF_DIR}"), str(sweep_dir))
    GlobalHydra.instance().clear()
    hydra = Hydra(task_name="yolobuild", config_loader=loader)
    GlobalHydra.instance().initialize(hydra)
    try:
        return hydra.multirun(config_name=APP_CONFIG, task_function=functools.partial(run_job, settings),
                              overrides=list(overrides), with_log_configuration=False)
    except (ConfigCompositionException, MissingConfigException, HydraException) as exc:
        err = _missing_plugin(exc, overrides)
        if err:
            raise err from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"command line: {first}") from None
    finally:
        GlobalHydra.instance().clear()
