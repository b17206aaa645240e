"""Pass-key documents: a number hidden in filler text and asked for at the end.

The format is the pass-key test of "Landmark Attention" (Mohtashami and Jaggi, 2023); the engine's
`mhla passkey` command (lib/eval/passkey.cpp) writes the same text, so keep the two in step:

    {TASK}\n{filler before}\n{The pass key is K. Remember it. K is the pass key.}\n{filler after}\n{QUESTION} K.

Training also hides the key in documentation text instead of the repeated filler sentences.
"""

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"


def info_line(key):
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def document(key, before, after):
    """The prompt (ending with the question) and the answer text that follows it."""
    return f"{TASK}\n{before}\n{info_line(key)}\n{after}\n{QUESTION}", f" {key}."


def filler(units):
    return " ".join([FILLER] * units)


def random_key(rng):
    return rng.randrange(10000, 100000)
