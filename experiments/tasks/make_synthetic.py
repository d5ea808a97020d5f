"""Writes the synthetic fine-tuning tasks shipped next to this script.

count_{train,eval}.jsonl (classify): a line of 12 words drawn from 'red', 'blue' and
filler words; the label is 1 if 'blue' occurs more often than 'red', else 0 (ties are
not drawn). No single word decides it: the head must count over the whole context.
copy_{train,eval}.jsonl (sft): the prompt 'copy: w1 ... wn =' and the response
' w1 ... wn'; the loss is only on the response.

  python experiments/tasks/make_synthetic.py   # rewrites the four files, same seed, same bytes
"""

import json
import os
import random

FILLER = ("cat", "dog", "sun", "tree", "car", "fish")
HERE = os.path.dirname(os.path.abspath(__file__))


def count_example(rng: random.Random) -> dict:
  while True:
    words = [rng.choice(("red", "blue", *FILLER)) for _ in range(12)]
    red, blue = words.count("red"), words.count("blue")
    if red != blue:
      return {"text": " ".join(words), "label": int(blue > red)}


def copy_example(rng: random.Random) -> dict:
  words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
  return {"prompt": "copy: " + " ".join(words) + " =", "response": " " + " ".join(words)}


def main() -> None:
  rng = random.Random(0)
  for name, make, sizes in (
    ("count", count_example, (2000, 400)),
    ("copy", copy_example, (2000, 200)),
  ):
    for split, size in zip(("train", "eval"), sizes):
      with open(os.path.join(HERE, f"{name}_{split}.jsonl"), "w") as f:
        for _ in range(size):
          f.write(json.dumps(make(rng)) + "\n")


if __name__ == "__main__":
  main()
