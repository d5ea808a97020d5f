"""Evaluation of a run directory: perplexity on any corpus, multiple choice and cloze tasks,
and a model for EleutherAI's lm-evaluation-harness.

    python -m gptjax.evaluate --workdir=DIR [--step=N] --task=NAME [task flags]

- scoring.py: log-likelihood of continuations given contexts, in fixed batch shapes;
- perplexity.py: sliding-window perplexity of documents, with a document-clustered error;
- tasks.py: the task file formats (HellaSwag, LAMBADA, generic multiple choice);
- choice.py: few-shot prompts and the multiple-choice and cloze metrics;
- harness.py: the `gptjax` model of lm-evaluation-harness (needs the `eval` extra);
- run.py: one evaluation of a run directory, writing DIR/eval/STEP/NAME.json and an eval row;
- __main__.py: the command line over run.py.
"""
