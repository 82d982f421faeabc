"""`yolobuild --multirun`: each job of a sweep runs on Hydra's own launchers and sweepers (basic,
joblib, submitit, ray, optuna, ...), so a sweep runs wherever Hydra can send a job; what the jobs
leave is gathered into one folder, `<workspace.path>/sweeps/<time>/` (summary.json, summary.csv,
report.html). The single-build path never imports this package."""
