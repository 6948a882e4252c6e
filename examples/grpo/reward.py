"""The reward: a verifiable function of the sample's text alone (no learned judge).

"Make the stories happier": the number of words from a small joy lexicon in the completion, capped
at CAP and scaled to [0, 1]. Why this one: stories260K already writes these words in about a third
of its 32-token samples (so most groups of 8 hold both rewarded and unrewarded samples, and the
group-normalised advantage is rarely zero), the count can keep rising past the first hit (partial
credit up to CAP), and anyone can check it by reading the text. A rare word (e.g. "dog", in ~6% of
samples) leaves most groups without signal and learns far slower on 2 cores.
"""

import re

JOY = frozenset({"happy", "happily", "smile", "smiled", "smiling", "laugh", "laughed", "fun", "joy", "love",
                 "loved", "glad", "excited"})
CAP = 4
_WORD = re.compile(r"[a-z]+")

REWARD_HELP = ("reward: words of the joy lexicon (" + ", ".join(sorted(JOY)) +
               f") in the completion, min(count, {CAP}) / {CAP}")


def reward(text: str) -> float:
    return min(sum(w in JOY for w in _WORD.findall(text.lower())), CAP) / CAP
