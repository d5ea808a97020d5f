"""TFDS catalog datasets (c4, lm1b, ...) prepared as ArrayRecord and read without TensorFlow.

Preparation is explicit: a dataset that is not yet in `data.data_dir` is only
downloaded when `data.download=True`, so a training job on a machine without
network (or a typo'd data_dir) fails in a second with the command that fixes
it, instead of hanging on a download or silently filling a local disk. Prepare
once into a shared (e.g. gs://) data_dir and every later run just reads it.
"""

import os
import re
from collections.abc import Sequence

from absl import logging

from gptjax.data import paths

# name, name/config, name:version or name/config:version, e.g. 'c4/en:3.1.0'.
NAME = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.+-]+)?(:[0-9]+\.[0-9*]+\.[0-9*]+)?$")


def name_problems(name: str, setting: str) -> list[str]:
  """Why `name` (the value of `setting`) cannot be a TFDS catalog dataset, checked
  without touching data_dir: its form, then whether TFDS knows the builder."""
  if not NAME.match(name):
    return [
      f"{setting}={name!r}: not a TFDS name like 'lm1b', 'c4/en' or 'c4/en:3.1.0'"
      + (
        ", 'embedded', or a local glob ending in .txt or .jsonl" if setting == "data.source" else ""
      )
    ]
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  try:
    tfds.builder_cls(name.split(":")[0].split("/")[0])
  except tfds.core.registered.DatasetNotFoundError:
    return [
      f"{setting}={name!r}: not a TFDS catalog dataset; use a name from "
      "https://www.tensorflow.org/datasets/catalog (e.g. 'lm1b' or 'c4/en:3.1.0')"
      + (
        ", 'embedded', or a local glob ending in .txt or .jsonl" if setting == "data.source" else ""
      )
    ]
  return []


def prepare(
  name: str,
  data_dir: str,
  download: bool,
  splits: dict[str, str],
  fields: dict[str, str],
  group: str = "data",
) -> tuple[str, dict[str, Sequence[dict]]]:
  """Opens catalog dataset `name` ('c4/en:3.1.0') from `data_dir`, preparing it if allowed.

  `splits` maps our split names ('train', 'validation') to TFDS split
  expressions (slicing such as 'train[:99%]' works); `fields` maps settings
  ('text_field') to the features they name, so a wrong one is refused before
  any work. `group` is the config group holding `source`, the splits and the
  fields ('data' for pretraining, 'finetune' for task data), for the messages.
  Returns the identity used in cache keys and one random-access source per split.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except ValueError as e:  # Unknown name, config or version.
    raise ValueError(
      f"{group}.source={name!r}: not a TFDS catalog dataset ({str(e).splitlines()[0]}); "
      "use a name, config and version from https://www.tensorflow.org/datasets/catalog "
      "(e.g. 'lm1b' or 'c4/en:3.1.0'), 'embedded', or a local glob ending in .txt or "
      ".jsonl"
    ) from e
  except ImportError as e:  # super_glue, ...: builders that need TensorFlow itself
    raise ValueError(_needs_module(name, group, e, "its TFDS builder")) from e
  full_name = builder.info.full_name
  if not builder.is_prepared():
    if not download:
      raise ValueError(
        f"{group}.source={name!r}: {full_name} is not prepared in data.data_dir="
        f"{data_dir!r}. Prepare it once (this downloads it and writes ArrayRecord "
        f"files): python -m gptjax.prepare --config=YOUR_EXPERIMENT.py "
        f"--config.{group}.source={name} --config.data.data_dir={data_dir} "
        "--config.data.download=True (or add --config.data.download=True to this "
        "run), or point data.data_dir at the directory where it was prepared"
      )
    with paths.building(os.fspath(builder.data_path)):  # others wait, then reuse it
      if not builder.is_prepared():
        logging.info("catalog: downloading and preparing %s into %s", full_name, data_dir)
        try:
          builder.download_and_prepare(file_format="array_record")
        except Exception as e:  # archives: TFDS extracts them with TensorFlow's file API
          if _missing(e) is None:
            raise
          raise ValueError(_needs_module(name, group, e, "preparing it")) from e
  features = builder.info.features
  for setting, feature in fields.items():
    if feature not in features:
      raise ValueError(
        f"{group}.{setting}={feature!r}: {full_name} has no such feature; "
        f"use one of {sorted(features.keys())}"
      )
  sources = {}
  for split, expression in splits.items():
    try:
      sources[split] = tfds.data_source(name, data_dir=data_dir, split=expression, download=False)
    except (ValueError, KeyError) as e:
      raise ValueError(
        f"{group}.{'train_split' if split == 'train' else 'eval_split'}={expression!r}: "
        f"not a split of {full_name} ({e}); it has {sorted(builder.info.splits.keys())}"
        ", and slices such as 'train[:99%]' also work"
      ) from e
    if not len(sources[split]):
      raise ValueError(
        f"{full_name} split {expression!r} is empty; choose another "
        f"{group}.{'train_split' if split == 'train' else 'eval_split'}"
      )
  identity = "|".join([full_name, splits["train"], splits["validation"], *fields.values()])
  return identity, sources


def _missing(error: BaseException) -> str | None:
  """The module whose absence caused `error`, if any (TFDS re-raises import errors with
  new messages, so the name is on the original one in the chain)."""
  while error is not None:
    if isinstance(error, ImportError) and error.name:
      return error.name
    error = error.__cause__ or error.__context__
  return None


def _needs_module(name: str, group: str, error: BaseException, what: str) -> str:
  module = _missing(error)
  package = "tensorflow-cpu" if module == "tensorflow" else module
  return (
    f"{group}.source={name!r}: {what} needs the module {module!r}, which gptjax does not "
    f"install; pip install {package}"
    + (
      " for the one preparation (reading it afterwards does not need it)"
      if what == "preparing it"
      else ""
    )
    + ", or choose another dataset"
  )
