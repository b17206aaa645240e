"""Writes a LongBench-format file of many questions about one long held-out document, for
measuring document reuse (`mhla longbench --reuse`): the questions and answers are the ones
build_corpus.py takes from that document (an API entry and its first sentences, a section title
and its opening paragraph), under LongBench's multifieldqa_en template and metric.

    python3 tools/train/make_docqa.py --corpus .train-data/corpus --out docqa.jsonl \\
        [--name library/socketserver] [--questions 16]
"""

import argparse
import json
import os


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="library/socketserver", help="held-out document")
    ap.add_argument("--questions", type=int, default=16)
    args = ap.parse_args()

    def rows(name):
        with open(os.path.join(args.corpus, name), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    docs = {d["name"]: d["text"] for d in rows("heldout.jsonl")}
    if args.name not in docs:
        raise SystemExit(f"{args.name} is not a held-out document; choose one of {sorted(docs)}")
    context = docs[args.name]
    pairs = [p for p in rows("qa_heldout.jsonl") if p["name"] == args.name][: args.questions]
    with open(args.out, "w", encoding="utf-8") as f:
        for k, p in enumerate(pairs):
            f.write(json.dumps({"input": p["q"], "context": context, "answers": [p["a"]],
                                "length": len(context.split()), "dataset": "multifieldqa_en", "language": "en",
                                "all_classes": None, "_id": f"{args.name}#{k}"}, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(pairs)} questions about {args.name} ({len(context)} characters)")


if __name__ == "__main__":
    main()
