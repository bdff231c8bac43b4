"""What a message is, besides its intent: small talk, a request for a person, a bare answer.

An intent model trained on support requests has no good answer for "hi there" or "thanks,
that's all" (they land in out-of-scope, or worse, on some intent by chance), and a message that
is only an order number carries no intent at all. These cues are recognised from the words
themselves, before or beside the model, and work for any agent's model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

SmallTalk = Literal["greeting", "thanks", "goodbye"]

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

# Whole phrases first (longest wins), so "thank you so much" is one cue, not three words.
_SMALL_TALK: dict[SmallTalk, tuple[str, ...]] = {
    "greeting": (
        "hi", "hello", "hey", "heya", "hiya", "howdy", "greetings", "good morning",
        "good afternoon", "good evening", "morning", "evening", "hi there", "hello there",
        "hey there", "how are you", "how are you doing", "how's it going", "anyone there",
        "is anyone there", "are you there",
    ),
    "thanks": (
        "thanks", "thank you", "thx", "ty", "cheers", "thanks a lot", "thank you so much",
        "thanks so much", "many thanks", "much appreciated", "appreciate it", "i appreciate it",
        "great thanks", "perfect thanks", "that's great", "that helps", "that helped",
        "that's helpful", "brilliant", "awesome", "perfect", "great", "ok thanks",
        "okay thanks", "got it", "that's all", "that is all", "that's everything",
        "nothing else", "no that's all", "all good", "that's it",
    ),
    "goodbye": (
        "bye", "goodbye", "good bye", "bye bye", "see you", "see ya", "have a nice day",
        "have a good day", "take care", "later", "cya", "good night",
    ),
}  # fmt: skip
# Words that carry no request of their own around small talk ("oh hi", "ok, thanks again").
_FILLER = frozenset(
    """a again all and at for i it just ok okay oh so that the then there this very well yes
    yeah yep you your really bot agent""".split()  # noqa: SIM905 - a word list reads better
)
_PRECEDENCE: tuple[SmallTalk, ...] = ("goodbye", "thanks", "greeting")

_HUMAN = re.compile(
    r"\b(human|real person|a person|someone real|somebody real|live agent|real agent|"
    r"representative|operator|agent|your manager|a manager)\b",
    re.IGNORECASE,
)

# Words around a bare value: "it's ORD-10003", "order number: ORD-1", "what about ORD-2?".
_ANSWER_FILLER = frozenset(
    """a about and any also are as at be but for here how i i'm id is it it's its me mean meant
    my no not number of ok okay on one order please so sorry sure that the then this try use
    wait was what yes yeah""".split()  # noqa: SIM905
)


def _phrases() -> list[tuple[tuple[str, ...], SmallTalk]]:
    found = [(tuple(_WORD.findall(p)), kind) for kind, ps in _SMALL_TALK.items() for p in ps]
    return sorted(found, key=lambda item: -len(item[0]))


_PHRASES = _phrases()


def small_talk(text: str) -> SmallTalk | None:
    """The kind of small talk `text` is, when it is nothing else: "hi there" and "thanks,
    that's all" are; "hi, where is my order?" is not (it has a request)."""
    words = _WORD.findall(text.lower())
    if not words or len(words) > 12:
        return None
    kinds: set[SmallTalk] = set()
    i = 0
    while i < len(words):
        for phrase, kind in _PHRASES:
            if tuple(words[i : i + len(phrase)]) == phrase:
                kinds.add(kind)
                i += len(phrase)
                break
        else:
            if words[i] not in _FILLER:
                return None
            i += 1
    # A closing ends the conversation, whatever greeting came with it.
    return next((k for k in _PRECEDENCE if k in kinds), None)


def asks_for_human(text: str) -> bool:
    """An explicit request for a person, whatever else the message says."""
    return _HUMAN.search(text) is not None


def is_bare_answer(text: str, values: Iterable[str]) -> bool:
    """True when `text` is only slot values (an order number, an email) and filler words: an
    answer to a question, not a request of its own."""
    rest = text.lower()
    found = False
    for value in sorted(values, key=len, reverse=True):
        if value and value.lower() in rest:
            rest = rest.replace(value.lower(), " ")
            found = True
    return found and all(word in _ANSWER_FILLER for word in _WORD.findall(rest))
