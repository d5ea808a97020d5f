"""A TFDS dataset of source files (one document per file), stored as ArrayRecord.

Why TFDS + ArrayRecord: the prepared dataset is a standard, self-describing
on-disk artefact (`dataset_info.json`, features, shards) that `tfds.data_source`
reads with random access and without TensorFlow, so the same reading path will
serve real TFDS corpora later. Generation runs in-process without TensorFlow
(verified with tensorflow-datasets 4.9.10).

The dataset name encodes everything that determines its contents (interpreter
version, held-out percentage, and a fingerprint of the file list), so a changed
corpus gets a new directory and a prepared one is never rebuilt.
"""

import dataclasses
import os
from collections.abc import Iterator, Sequence

from absl import logging
import tensorflow_datasets as tfds

from gptjax.data import corpus

DATASET_NAME = 'source_corpus'
SPLITS = ('train', 'validation')


@dataclasses.dataclass(eq=False)
class SourceCorpusConfig(tfds.core.BuilderConfig):
  """Which directory to read and how many documents to hold out."""
  root: str = ''
  fingerprint: str = ''  # corpus.fingerprint of the file list at config time.
  validation_percent: int = 5


class SourceCorpus(tfds.core.GeneratorBasedBuilder):
  """Source files under `config.root`, split into train/validation by path hash."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'One document per source file.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Source files of a directory tree, one document per file.',
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'path': tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded: the corpus is local.
    config = self.builder_config
    files = corpus.list_source_files(config.root)
    if corpus.fingerprint(files) != config.fingerprint:
      raise RuntimeError(f'files under {config.root!r} changed while preparing '
                         f'{config.name}; rerun once they are stable')
    by_split = split_files(files, config.validation_percent)
    for split, split_files_ in by_split.items():
      logging.info('source_corpus %s: %s has %d documents (%d bytes)', config.name,
                   split, len(split_files_), sum(f.size for f in split_files_))
    return {split: self._generate_examples(config.root, split_files_)
            for split, split_files_ in by_split.items()}

  def _generate_examples(self, root: str, files: Sequence[corpus.SourceFile]
                         ) -> Iterator[tuple[str, dict[str, str]]]:
    skipped = 0
    for f in files:
      with open(os.path.join(root, f.relpath), 'rb') as handle:
        raw = handle.read()
      try:
        text = raw.decode('utf-8')
      except UnicodeDecodeError:
        skipped += 1
        logging.warning('source_corpus: skipping %s (not UTF-8)', f.relpath)
        continue
      yield f.relpath, {'text': text, 'path': f.relpath}
    if skipped:
      logging.warning('source_corpus: skipped %d non-UTF-8 files', skipped)


def split_files(files: Sequence[corpus.SourceFile], validation_percent: int
                ) -> dict[str, list[corpus.SourceFile]]:
  """Partitions files into train/validation; fails loudly if either is empty."""
  validation = [f for f in files if corpus.is_validation(f.relpath, validation_percent)]
  train = [f for f in files if not corpus.is_validation(f.relpath, validation_percent)]
  if not train or not validation:
    raise ValueError(
        f'data.validation_percent={validation_percent} puts {len(validation)} '
        f'of {len(files)} documents in validation and {len(train)} in train; '
        'both splits need documents: use a value between 1 and 99, or a corpus '
        'with more files')
  return {'train': train, 'validation': validation}


def make_config(root: str, validation_percent: int) -> SourceCorpusConfig:
  """Builds the config (and thus the cache identity) for a corpus directory."""
  files = tuple(corpus.list_source_files(root))
  if not files:
    raise ValueError(f'corpus root {root!r} contains no {corpus.DEFAULT_SUFFIXES} '
                     'files; point it at a directory of source files')
  is_stdlib = os.path.realpath(root) == os.path.realpath(corpus.stdlib_root())
  label = 'stdlib' if is_stdlib else 'dir'
  split_files(files, validation_percent)  # Fail before TFDS creates any directory.
  files_hash = corpus.fingerprint(files)
  name = f'{label}_{corpus.python_version_tag()}_val{validation_percent}_{files_hash}'
  return SourceCorpusConfig(name=name, root=root, fingerprint=files_hash,
                            validation_percent=validation_percent,
                            description=f'source files under {root}')


def prepare(root: str, data_dir: str, validation_percent: int
            ) -> tuple[str, dict[str, Sequence[dict]]]:
  """Prepares the dataset once (no-op if already on disk) and opens it.

  Returns the dataset identity ('source_corpus/<config>:<version>', used in
  downstream cache keys) and a random-access data source per split.
  """
  config = make_config(root, validation_percent)
  builder = SourceCorpus(config=config, data_dir=data_dir, file_format='array_record')
  identity = f'{DATASET_NAME}/{config.name}:{builder.version}'
  if builder.is_prepared():
    logging.info('source_corpus: reusing prepared %s in %s', identity, data_dir)
  else:
    logging.info('source_corpus: preparing %s from files under %s into %s',
                 identity, root, data_dir)
    builder.download_and_prepare()
  sources = tfds.data_source(identity, data_dir=data_dir, download=False)
  return identity, {split: sources[split] for split in SPLITS}


def read_texts(source: Sequence[dict]) -> list[str]:
  """All documents of one split, in the data source's (deterministic) order."""
  return [source[i]['text'].decode('utf-8') for i in range(len(source))]
