"""Builds the training corpus from the Python documentation's reStructuredText sources.

Source: Debian's python3.11-doc package (/usr/share/doc/python3.11/html/_sources/**/*.rst.txt),
the Python 3.11 documentation, licensed under the PSF License Agreement (code examples dual
licensed under the PSF License and the Zero-Clause BSD license); see
/usr/share/doc/python3.11-doc/copyright.

The markup is turned into plain text (roles and directives unwrapped, labels, index entries and
author lines dropped, code kept). Files are split into training and held-out sets by a hash of
their path, so the split never changes. Besides the text it writes question/answer pairs taken
from the documentation (an API entry and its first sentences, a section title and its opening
paragraph) for the dialogue part of the training mix.

    python3 tools/train/build_corpus.py --out .train-data/corpus

Writes train.jsonl and heldout.jsonl ({"name", "text"} per file), qa_train.jsonl and
qa_heldout.jsonl ({"q", "a", "name"}: question, answer, source file), heldout.txt (the held-out
files as one text, for perplexity) and spm_input.txt (the training text and dialogue turns,
line by line, for the tokenizer).
"""

import argparse
import hashlib
import json
import os
import re

SOURCES = "/usr/share/doc/python3.11/html/_sources"
HELDOUT_PERCENT = 3

# Directives whose whole block is bookkeeping, not prose.
DROP = {
    "index", "module", "moduleauthor", "sectionauthor", "toctree", "testsetup", "testcleanup",
    "highlight", "currentmodule", "include", "literalinclude", "raw", "only", "tabularcolumns",
    "productionlist", "image", "figure", "csv-table", "audit-event", "audit-event-table",
    "limited-api-list", "sidebar", "contents", "c:namespace", "c:namespace-push",
    "c:namespace-pop",
}
# Directives that announce an API entry: the signature becomes a line of text.
SIGNATURES = {
    "function", "method", "class", "data", "attribute", "exception", "decorator", "classmethod",
    "staticmethod", "coroutinefunction", "coroutinemethod", "abstractmethod", "decoratormethod",
    "envvar", "awaitablemethod", "property", "c:function", "c:macro", "c:var", "c:member",
    "c:type", "c:struct", "c:enum", "c:enumerator", "c:union", "cmdoption", "option", "describe",
    "opcode", "pdbcommand", "2to3fixer",
}
# Directives that become a leading word.
LABELS = {
    "note": "Note:", "warning": "Warning:", "seealso": "See also:", "tip": "Tip:",
    "important": "Important:", "caution": "Caution:", "attention": "Attention:", "hint": "Hint:",
    "danger": "Danger:", "admonition": "",
}
VERSIONS = {
    "versionadded": "New in version {}.", "versionchanged": "Changed in version {}:",
    "deprecated": "Deprecated since version {}:", "deprecated-removed": "Deprecated since version {}:",
}
# Directives whose body is kept as it is.
BODY = {"impl-detail", "availability", "list-table", "table", "glossary", "epigraph", "topic"}
CODE = {"code-block", "sourcecode", "code", "doctest", "testcode", "testoutput"}

DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([A-Za-z0-9:_-]+)::\s*(.*)$")
ROLE = re.compile(r":[A-Za-z0-9:_-]+:`([^`]*)`")
LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`__?")
REF = re.compile(r"`([^`]+)`_\b")
ADORN = re.compile(r"^\s*([=\-~^*#+\"'`:.])\1{3,}\s*$")
TABLE_RULE = re.compile(r"^\s*[+|][-=+|: ]*$")


def indent_of(line):
    return len(line) - len(line.lstrip(" "))


def role_text(inner):
    inner = inner.lstrip("!")
    m = re.match(r"^(.*?)\s*<([^>]*)>$", inner)
    if m and m.group(1):
        return m.group(1)
    return inner[1:].split(".")[-1] if inner.startswith("~") else inner


def inline(text):
    text = ROLE.sub(lambda m: role_text(m.group(1)), text)
    text = LINK.sub(lambda m: m.group(1), text)
    text = REF.sub(lambda m: m.group(1), text)
    text = text.replace("``", "").replace("**", "")
    text = re.sub(r"\\(.)", r"\1", text)
    return text


def block_end(lines, start, indent):
    """Index after the block whose lines are blank or indented deeper than `indent`."""
    j = start
    while j < len(lines) and (not lines[j].strip() or indent_of(lines[j]) > indent):
        j += 1
    while j > start and not lines[j - 1].strip():
        j -= 1
    return j


def dedent(lines):
    width = min((indent_of(x) for x in lines if x.strip()), default=0)
    return [x[width:] for x in lines]


def clean(lines):
    """Plain text lines of reST lines."""
    out = []
    i = 0
    literal_next = False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if literal_next and stripped:
            # An indented literal block after "::": keep the code as it is.
            end = block_end(lines, i, indent_of(line) - 1)
            out.extend(lines[i:end])
            i = end
            literal_next = False
            continue
        if ADORN.match(line) or TABLE_RULE.match(line) and "-" in line:
            i += 1
            continue
        m = DIRECTIVE.match(line)
        if m:
            ind, name, arg = len(m.group(1)), m.group(2).lower(), m.group(3)
            end = block_end(lines, i + 1, ind)
            body = lines[i + 1:end]
            while body and re.match(r"^\s+:[A-Za-z -]+:", body[0]):  # directive options
                body = body[1:]
            pad = " " * ind
            if name in CODE:
                out.extend(pad + x for x in dedent(body))
            elif name in SIGNATURES:
                prefix = "@" if "decorator" in name else ""
                out.append(pad + prefix + inline(arg))
                out.extend(pad + x for x in clean(dedent(body)))
            elif name in LABELS or name in VERSIONS:
                head = LABELS[name] if name in LABELS else VERSIONS[name].format(arg.split()[0] if arg else "")
                inner = clean(dedent(body))
                text = " ".join(x for x in [head, inline(arg) if name in LABELS else ""] if x)
                if inner and inner[0].strip() and not inner[0].startswith(" "):
                    inner[0] = (text + " " + inner[0]).strip()
                    out.extend(pad + x for x in inner)
                else:
                    out.append(pad + text)
                    out.extend(pad + x for x in inner)
            elif name in ("rubric", "centered", "title"):
                out.append(pad + inline(arg))
            elif name in BODY:
                out.extend(pad + x for x in clean(dedent(body)))
            i = end
            continue
        if stripped.startswith(".. "):  # comments, labels, substitutions
            i = block_end(lines, i + 1, indent_of(line))
            continue
        if stripped == "::":
            literal_next = True
            i += 1
            continue
        if stripped.endswith("::"):
            line = line.rstrip()[:-1]
            literal_next = True
        out.append(inline(line.rstrip()))
        i += 1
    return out


def squeeze(lines):
    """Text with runs of blank lines collapsed to one."""
    text = "\n".join(x.rstrip() for x in lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def first_sentences(paragraph, limit=300):
    words = " ".join(paragraph.split())
    parts = re.split(r"(?<=[a-z0-9)\]])\.\s+(?=[A-Z])", words)
    answer = parts[0].rstrip(".") + "."
    for p in parts[1:]:
        if len(answer) + len(p) > limit:
            break
        answer += " " + p.rstrip(".") + "."
    return answer


SIGNATURE = re.compile(r"^(@?)([A-Za-z_][\w.]*)\(([^)]*)\)\s*$")


TOPIC_QUESTIONS = ("Tell me about {}.", "What should I know about {}?", "Can you explain {}?")


def qa_pairs(text):
    """Question/answer pairs from an API entry and its description, or a title and its text."""
    pairs = []
    paras = [p for p in text.split("\n\n") if p.strip()]
    for k in range(len(paras) - 1):
        head, body = paras[k].strip(), paras[k + 1]
        if "\n" in head or body.startswith(" " * 4) or len(body.split()) < 8:
            continue
        if body.lstrip().startswith((">>>", "$", "import ", "def ", "class ")):
            continue
        answer = first_sentences(body)
        if len(answer) < 40 or ":." in answer or answer.endswith(":"):
            continue
        m = SIGNATURE.match(head)
        if m:
            name = m.group(2).split(".")[-1]
            pairs.append({"q": f"What does {name}() do?", "a": answer})
        elif 2 <= len(head.split()) <= 8 and head[0].isupper() and not head.endswith((".", ":", ",")):
            head = re.sub(r"^(About|Introduction to|An Introduction to)\s+", "", head)
            question = TOPIC_QUESTIONS[len(pairs) % len(TOPIC_QUESTIONS)]
            pairs.append({"q": question.format(head), "a": answer})
    return pairs


def held_out(name):
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sources", default=SOURCES)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    docs = {"train": [], "heldout": []}
    qas = {"train": [], "heldout": []}
    for root, _, files in sorted(os.walk(args.sources)):
        for f in sorted(files):
            if not f.endswith(".rst.txt"):
                continue
            path = os.path.join(root, f)
            name = os.path.relpath(path, args.sources)[: -len(".rst.txt")]
            if name.startswith(("whatsnew/changelog", "license")):
                continue  # a long list of bug numbers; license texts
            with open(path, encoding="utf-8") as fh:
                text = squeeze(clean(fh.read().split("\n")))
            if len(text) < 200:
                continue
            split = "heldout" if held_out(name) else "train"
            docs[split].append({"name": name, "text": text})
            qas[split].extend(dict(p, name=name) for p in qa_pairs(text))
    for split in docs:
        with open(os.path.join(args.out, f"{split}.jsonl"), "w", encoding="utf-8") as fh:
            for d in docs[split]:
                fh.write(json.dumps(d, ensure_ascii=False) + "\n")
        with open(os.path.join(args.out, f"qa_{split}.jsonl"), "w", encoding="utf-8") as fh:
            for p in qas[split]:
                fh.write(json.dumps(p, ensure_ascii=False) + "\n")
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(d["text"] for d in docs["heldout"]))
    with open(os.path.join(args.out, "spm_input.txt"), "w", encoding="utf-8") as fh:
        for d in docs["train"]:
            fh.write("\n".join(x for x in d["text"].split("\n") if x.strip()) + "\n")
        for p in qas["train"]:
            fh.write(f"User: {p['q']}\nAssistant: {p['a']}\n")
    for split in docs:
        chars = sum(len(d["text"]) for d in docs[split])
        print(f"{split}: {len(docs[split])} files, {chars} characters, {len(qas[split])} question/answer pairs")


if __name__ == "__main__":
    main()
