"""ROUGE-L by Google's rouge-score (default tokenizer, no stemmer), for tests/eval_rouge.test.ts.

Reads a JSON list of [reference, prediction] pairs on stdin and writes a JSON list of
[precision, recall, fmeasure] on stdout. Needs the venv of tests/reference/rouge_setup.sh.
"""
import json
import sys

from rouge_score import rouge_scorer

scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
out = []
for reference, prediction in json.load(sys.stdin):
    s = scorer.score(reference, prediction)["rougeL"]
    out.append([s.precision, s.recall, s.fmeasure])
json.dump(out, sys.stdout)
