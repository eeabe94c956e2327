"""The text layer: reading model output and answers, with no knowledge of the graph or the endpoint.

- `parsing`: output sections (`[Summary]`, `[Answer]`, a strategy's own), thinking split off, the answer read;
- `answers`: normalising and comparing answers (integers, LaTeX through math-verify, free text);
- `answer_rules`: re-reading stored outputs by another answer rule (`kflow report --answer-rule`);
- `sentences`: sentence boundaries (pysbd) for trimming texts at a whole sentence;
- `tokens`: token counting (the served tokenizer, else an estimate).
- `safe`: text from outside made storable (surrogates, NUL) and printable (escape sequences, controls).
"""
