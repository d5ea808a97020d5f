"""Launchers: the same `python -m gptjax.main` run on local processes, TPU VMs or SLURM.

Each launcher turns a `job.Job` (experiment file, workdir, overrides) into the exact
commands for one platform. A sweep runner builds one Job per member with
`job.member(sweep_dir, name, config, overrides)` and hands it to `local.run`,
`tpu.plan` or `slurm.script`; the CLI is `python -m gptjax.launch {local,tpu,slurm}`.
"""
