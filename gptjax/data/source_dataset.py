"""Local documents as a TFDS dataset stored as ArrayRecord: the embedded corpus and file globs.

Why TFDS + ArrayRecord: the prepared dataset is a standard, self-describing
on-disk artefact (`dataset_info.json`, features, shards) that `tfds.data_source`
reads with random access and without TensorFlow, exactly like a prepared TFDS
catalog dataset, so everything downstream has one reading path. Generation runs
in-process without TensorFlow (verified with tensorflow-datasets 4.9.10).

The builder config name encodes everything that determines the contents (the
file list with sizes and mtimes, how files become documents, the held-out
percentage), so a changed corpus gets a new directory and a prepared one is
never rebuilt.
"""

import contextlib
import dataclasses
import io
import os
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds
from absl import logging

from gptjax.data import corpus, documents, paths

SPLITS = ("train", "validation")


@dataclasses.dataclass(eq=False)
class SourceCorpusConfig(tfds.core.BuilderConfig):
  """A corpus.Spec as TFDS's builder config (see there)."""

  root: str = ""
  pattern: str = ""
  fingerprint: str = ""
  validation_percent: int = 5
  txt_documents: str = "file"
  jsonl_field: str = "text"


class SourceCorpus(tfds.core.GeneratorBasedBuilder):
  """Documents of local files, split into train/validation by a hash of their id."""

  VERSION = tfds.core.Version(corpus.VERSION)
  RELEASE_NOTES = {
    "1.0.0": "One document per source file.",
    "2.0.0": "File globs, blank-line and JSON-lines documents; invalid UTF-8 "
    "is replaced instead of skipping the file.",
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="Documents read from local files.",
      disable_shuffling=True,  # Keep file order: the corpus reads as written.
      features=tfds.features.FeaturesDict(
        {
          "text": tfds.features.Text(),
          "path": tfds.features.Text(),  # Document id: relpath, or relpath#index.
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded: the corpus is local.
    config = self.builder_config
    files = corpus.list_files(config.root, config.pattern)
    if corpus.fingerprint(files) != config.fingerprint:
      raise RuntimeError(
        f"files under {config.root!r} changed while preparing "
        f"{config.name}; rerun once they are stable"
      )
    return {split: self._generate_examples(files, split) for split in SPLITS}

  def _generate_examples(
    self, files: Sequence[corpus.SourceFile], split: str
  ) -> Iterator[tuple[str, dict[str, str]]]:
    config = self.builder_config
    for doc_id, text in iter_documents(config, files, documents.ReadStats()):
      if corpus.is_validation(doc_id, config.validation_percent) == (split == "validation"):
        yield doc_id, {"text": text, "path": doc_id}


def iter_documents(
  config: SourceCorpusConfig, files: Sequence[corpus.SourceFile], stats: documents.ReadStats
) -> Iterator[tuple[str, str]]:
  """(document id, text) of every document, in file order.

  The id is the file's relative path, plus '#index' when a file holds several
  documents; the train/validation split is a hash of it.
  """
  for f in files:
    several = config.txt_documents != "file" or documents.is_jsonl(f.relpath)
    texts = documents.read(
      os.path.join(config.root, f.relpath), config.txt_documents, config.jsonl_field, stats
    )
    for index, text in enumerate(texts):
      yield (f"{f.relpath}#{index}" if several else f.relpath), text


def check_documents(config: SourceCorpusConfig) -> None:
  """Reads the corpus once before TFDS does, to fail (and warn) with our own messages.

  Bad lines, empty corpora and empty splits are reported naming the file or
  field and the fix; TFDS would only say that a split yielded no examples.
  """
  stats = documents.ReadStats()
  counts = {split: 0 for split in SPLITS}
  source = config.pattern or config.root
  for doc_id, _ in iter_documents(config, corpus.list_files(config.root, config.pattern), stats):
    counts[
      "validation" if corpus.is_validation(doc_id, config.validation_percent) else "train"
    ] += 1
  if stats.files_with_invalid_utf8:
    logging.warning(
      "source_corpus %s: %d files had invalid UTF-8; %d byte sequences were replaced with U+FFFD",
      source,
      stats.files_with_invalid_utf8,
      stats.replaced_bytes,
    )
  if not sum(counts.values()):
    raise ValueError(
      f"empty corpus: {source!r} holds no documents (only empty or "
      "blank files); point data.source at files with text"
    )
  if not all(counts.values()):
    raise ValueError(
      f"data.validation_percent={config.validation_percent} puts "
      f"{counts['validation']} documents of {source!r} in validation and "
      f"{counts['train']} in train; both splits need documents: add documents "
      "(or split files with data.txt_documents='blank_lines') or change "
      "data.validation_percent"
    )


def prepare(corpus_spec: corpus.Spec, data_dir: str) -> tuple[str, dict[str, Sequence[dict]]]:
  """Prepares the dataset once (no-op if already on disk) and opens it.

  Returns the dataset identity ('source_corpus/<config>:<version>', used in
  downstream cache keys) and a random-access data source per split. A process
  that finds another one preparing the same dataset waits for it and reuses
  its result (`paths.building`, which on gs:// only covers this host). TFDS
  writes into a temp directory and renames it into place, so a local reader
  never sees half a dataset (on gs:// the rename copies file by file).
  """
  config = SourceCorpusConfig(**dataclasses.asdict(corpus_spec))
  builder = SourceCorpus(config=config, data_dir=data_dir, file_format="array_record")
  identity = corpus.identity(corpus_spec)
  if not builder.is_prepared():
    with paths.building(os.fspath(builder.data_path)):
      if not builder.is_prepared():
        logging.info(
          "source_corpus: preparing %s from %s into %s",
          identity,
          config.pattern or config.root,
          data_dir,
        )
        check_documents(config)
        # tfds prints 'Downloading and preparing dataset Unknown size ...' for local files,
        # where nothing is downloaded; the line above says what happens.
        with contextlib.redirect_stdout(io.StringIO()):
          builder.download_and_prepare()
  logging.info("source_corpus: using %s in %s", identity, data_dir)
  sources = tfds.data_source(identity, data_dir=data_dir, download=False)
  return identity, {split: sources[split] for split in SPLITS}
