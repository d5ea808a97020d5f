"""Which files form a source-code corpus, and which split each one belongs to.

Pure functions over a directory tree, kept apart from TFDS so the rules
(what is included, how documents are split) are easy to read and test.
"""

import dataclasses
import glob
import hashlib
import os
import sys
import sysconfig
from collections.abc import Sequence

# Directories skipped when walking a root. Test suites are excluded because they
# are large (the 3.11 stdlib has ~19 MB of tests vs ~12 MB of library code),
# repetitive, and contain deliberately odd encodings.
DEFAULT_EXCLUDED_DIRS = ("site-packages", "__pycache__", "test", "tests", "idle_test")
DEFAULT_SUFFIXES = (".py",)
DATASET_NAME = "source_corpus"  # the TFDS builder's name (source_dataset.SourceCorpus)
VERSION = "2.0.0"  # the builder's version; part of every identity


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One document: its path relative to the corpus root, and its size."""

  relpath: str
  size: int
  mtime_ns: int


def stdlib_root() -> str:
  """The standard library directory of the running interpreter."""
  return sysconfig.get_paths()["stdlib"]


def python_version_tag() -> str:
  """E.g. 'py3_11_7'; part of dataset names so a new interpreter gets a new cache."""
  return "py{}_{}_{}".format(*sys.version_info[:3])


def list_source_files(
  root: str,
  suffixes: Sequence[str] = DEFAULT_SUFFIXES,
  excluded_dirs: Sequence[str] = DEFAULT_EXCLUDED_DIRS,
) -> list[SourceFile]:
  """Lists the corpus files under `root`, sorted by relative path.

  Sorting makes every downstream step (fingerprint, split, generation order)
  independent of the filesystem's directory iteration order.
  """
  if not os.path.isdir(root):
    raise ValueError(
      f"corpus root {root!r} is not a directory; pass an existing directory of source files"
    )
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in excluded_dirs]
    for filename in filenames:
      if not filename.endswith(tuple(suffixes)):
        continue
      path = os.path.join(dirpath, filename)
      stat = os.stat(path)
      files.append(
        SourceFile(
          relpath=os.path.relpath(path, root).replace(os.sep, "/"),
          size=stat.st_size,
          mtime_ns=stat.st_mtime_ns,
        )
      )
  return sorted(files, key=lambda f: f.relpath)


def glob_root(pattern: str) -> str:
  """The directory above the first wildcard of `pattern`; documents are named relative to it."""
  parts = os.path.abspath(os.path.expanduser(pattern)).split(os.sep)
  fixed = next(i for i, part in enumerate(parts + ["*"]) if glob.has_magic(part))
  return os.sep.join(parts[: min(fixed, len(parts) - 1)]) or os.sep


def list_glob(pattern: str) -> list[SourceFile]:
  """The regular files matching `pattern` ('**' recurses), relative to `glob_root`, sorted."""
  root = glob_root(pattern)
  files = []
  for path in glob.glob(os.path.expanduser(pattern), recursive=True):
    if os.path.isfile(path):
      stat = os.stat(path)
      files.append(
        SourceFile(
          relpath=os.path.relpath(path, root).replace(os.sep, "/"),
          size=stat.st_size,
          mtime_ns=stat.st_mtime_ns,
        )
      )
  return sorted(files, key=lambda f: f.relpath)


def fingerprint(files: Sequence[SourceFile]) -> str:
  """A short hash of the file list (paths, sizes, mtimes).

  Used in the dataset name so that editing, adding or removing a file yields a
  new dataset instead of silently reusing a stale one; hashing metadata rather
  than contents keeps this check cheap enough to run on every start.
  """
  digest = hashlib.sha256()
  for f in files:
    digest.update(f"{f.relpath}\0{f.size}\0{f.mtime_ns}\n".encode())
  return digest.hexdigest()[:12]


def is_validation(relpath: str, validation_percent: int) -> bool:
  """Whether a document is held out, decided by a stable hash of its path.

  Splitting by document (not by row) keeps near-duplicate text of one file out
  of both splits; hashing the path (not Python's salted `hash`) makes the
  split identical across runs, machines and processes.
  """
  bucket = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big") % 100
  return bucket < validation_percent


@dataclasses.dataclass(frozen=True)
class Spec:
  """Which files to read, how they become documents, and how many are held out.

  `name` encodes all of it (file list with sizes and mtimes included), so it names the
  prepared dataset, and with `identity` every cache derived from it, without TFDS.
  """

  name: str
  description: str
  root: str
  pattern: str  # A glob; '' means the embedded rules: .py files under root.
  fingerprint: str  # fingerprint() of the file list when the spec was made.
  validation_percent: int
  txt_documents: str
  jsonl_field: str


def list_files(root: str, pattern: str) -> list[SourceFile]:
  """The files of a glob, or the embedded rules' files under root when pattern is ''."""
  return list_glob(pattern) if pattern else list_source_files(root)


def spec(
  root: str,
  validation_percent: int,
  pattern: str = "",
  txt_documents: str = "file",
  jsonl_field: str = "text",
) -> Spec:
  """The spec (and thus the cache identity) of a directory or a glob.

  With `pattern` set, `root` is ignored and derived from the glob.
  """
  if pattern:
    root = glob_root(pattern)
  files = tuple(list_files(root, pattern))
  if not files:
    what = (
      f"data.source={pattern!r} matches no files; check the path and quote the "
      "glob so the shell does not expand it"
      if pattern
      else f"corpus root {root!r} contains no {DEFAULT_SUFFIXES} files; point "
      "it at a directory of source files"
    )
    raise ValueError(what)
  files_hash = fingerprint(files)
  if pattern:
    settings = f"{root}\0{pattern}\0{txt_documents}\0{jsonl_field}"
    label = "files_" + hashlib.sha256(settings.encode()).hexdigest()[:8]
  else:
    is_stdlib = os.path.realpath(root) == os.path.realpath(stdlib_root())
    label = ("stdlib" if is_stdlib else "dir") + "_" + python_version_tag()
  return Spec(
    name=f"{label}_val{validation_percent}_{files_hash}",
    description=f"documents of {pattern or root}",
    root=root,
    pattern=pattern,
    fingerprint=files_hash,
    validation_percent=validation_percent,
    txt_documents=txt_documents,
    jsonl_field=jsonl_field,
  )


def identity(corpus_spec: Spec) -> str:
  """'source_corpus/<name>:<version>', the prepared dataset's TFDS name and every cache's key."""
  return f"{DATASET_NAME}/{corpus_spec.name}:{VERSION}"
