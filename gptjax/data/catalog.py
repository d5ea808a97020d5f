"""TFDS catalog datasets (c4, lm1b, ...) prepared as ArrayRecord and read without TensorFlow.

Preparation is explicit: a dataset that is not yet in `data.data_dir` is only
downloaded when `data.download=True`, so a training job on a machine without
network (or a typo'd data_dir) fails in a second with the command that fixes
it, instead of hanging on a download or silently filling a local disk. Prepare
once into a shared (e.g. gs://) data_dir and every later run just reads it.
"""

import os
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import logging

from gptjax.data import paths


def prepare(
  name: str, data_dir: str, download: bool, splits: dict[str, str], text_field: str
) -> tuple[str, dict[str, Sequence[dict]]]:
  """Opens catalog dataset `name` ('c4/en:3.1.0') from `data_dir`, preparing it if allowed.

  `splits` maps our split names to TFDS split expressions (slicing such as
  'train[:99%]' works). Returns the identity used in cache keys and one
  random-access source per split.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except ValueError as e:  # Unknown name, config or version.
    raise ValueError(
      f"data.source={name!r}: not a TFDS catalog dataset ({str(e).splitlines()[0]}); "
      "use a name, config and version from https://www.tensorflow.org/datasets/catalog "
      "(e.g. 'lm1b' or 'c4/en:3.1.0'), 'embedded', or a local glob ending in .txt or "
      ".jsonl"
    ) from e
  full_name = builder.info.full_name
  if not builder.is_prepared():
    if not download:
      raise ValueError(
        f"data.source={name!r}: {full_name} is not prepared in data.data_dir="
        f"{data_dir!r}. Prepare it once (this downloads it and writes ArrayRecord "
        f"files): python -m gptjax.prepare --config=YOUR_EXPERIMENT.py "
        f"--config.data.source={name} --config.data.data_dir={data_dir} "
        "--config.data.download=True (or add --config.data.download=True to this "
        "run), or point data.data_dir at the directory where it was prepared"
      )
    with paths.building(os.fspath(builder.data_path)):  # others wait, then reuse it
      if not builder.is_prepared():
        logging.info("catalog: downloading and preparing %s into %s", full_name, data_dir)
        builder.download_and_prepare(file_format="array_record")
  features = builder.info.features
  if text_field not in features:
    raise ValueError(
      f"data.text_field={text_field!r}: {full_name} has no such feature; "
      f"use one of {sorted(features.keys())}"
    )
  sources = {}
  for split, expression in splits.items():
    try:
      sources[split] = tfds.data_source(name, data_dir=data_dir, split=expression, download=False)
    except (ValueError, KeyError) as e:
      raise ValueError(
        f"data.{'train_split' if split == 'train' else 'eval_split'}={expression!r}: "
        f"not a split of {full_name} ({e}); it has {sorted(builder.info.splits.keys())}"
        ", and slices such as 'train[:99%]' also work"
      ) from e
    if not len(sources[split]):
      raise ValueError(
        f"{full_name} split {expression!r} is empty; choose another "
        f"data.{'train_split' if split == 'train' else 'eval_split'}"
      )
  identity = f"{full_name}|{splits['train']}|{splits['validation']}|{text_field}"
  return identity, sources
