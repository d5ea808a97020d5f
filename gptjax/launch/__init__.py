"""Launchers: the same `python -m gptjax.main` run on local processes, TPU VMs or SLURM.

Each launcher turns a `job.Job` (experiment file, workdir, overrides) into the exact
commands for one platform. A sweep runner builds one Job per member with
`job.member(sweep_dir, name, config, overrides)` and hands it to `local.run`,
`tpu.commands` or `slurm.script`; `tpu_sweep.script` turns a whole sweep into one
rerunnable bash script. The CLIs are `python -m gptjax.launch {local,tpu,slurm}` for
one run and `python -m gptjax.sweep --launcher={local,tpu,slurm}` for a sweep.
"""
