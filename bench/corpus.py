"""A varied script for the speech benchmarks: many short phrases, none frequent.

``bench.speech``'s first script draws every sentence from 37 phrases, so each recurs dozens of
times in a long clip and a single misheard phrase ("customers asked" heard as "customer
masked", about 1.6 points on 10 minutes) decides which decoder looks more accurate. This one
draws from 40 subjects, 60 actions and 50 endings (340 distinct words), so no phrase is
more than a few tenths of a point of the error rate. Plain words only: no digits or names
whose spelling a transcript could vary.
"""

from __future__ import annotations

import random

SUBJECTS = [
    "The project team", "Our support desk", "The new manager", "Every customer",
    "The sales group", "The design studio", "A small business", "The city council",
    "The night shift", "The research lab", "Our largest client", "The finance office",
    "The training course", "My older brother", "The school board", "A young engineer",
    "The local library", "Her best friend", "The hospital staff", "The football club",
    "Our neighbours", "The museum guide", "A careful reader", "The kitchen crew",
    "The radio station", "The youth choir", "Most of the farmers", "The lawyer",
    "A tired traveller", "The bakery owner", "The garden society", "The pilot",
    "Our grandparents", "The science teacher", "The bus driver", "A quiet student",
    "The art gallery", "The repair shop", "The weather service", "The whole village",
]  # fmt: skip
ACTIONS = [
    "finished the report", "asked for a simpler plan", "reviewed the budget",
    "moved the meeting to Monday", "tested the mobile application", "improved the search page",
    "wrote to the board", "found a problem with the invoices", "opened a new office",
    "changed the delivery schedule", "answered every question", "shared the weekly numbers",
    "painted the front door", "planted tomatoes behind the house", "cleaned the old windows",
    "bought a warm winter coat", "sold the blue bicycle", "repaired the broken fence",
    "cooked a large dinner", "read a book about rivers", "visited the northern coast",
    "called the doctor", "lost the keys again", "built a wooden bridge",
    "carried the boxes upstairs", "watched the evening news", "learned to play the piano",
    "wrote a short letter", "collected the empty bottles", "measured the kitchen floor",
    "ordered fresh bread", "checked the water supply", "signed the new contract",
    "welcomed the visitors", "trained the young horses", "washed the heavy blankets",
    "counted the votes", "printed the posters", "fixed the leaking roof", "closed the gate",
    "hired two more nurses", "explained the rules", "packed the camping gear",
    "sorted the letters", "tuned the old guitar", "found the missing cat",
    "ran along the beach", "climbed the steep hill", "borrowed a ladder",
    "served hot soup", "sent the parcel", "wrapped the presents", "picked the apples",
    "drew a map of the park", "filled the bird feeder", "recorded a new song",
    "moved to a bigger flat", "booked a table by the window", "swept the yard",
    "returned the library books",
]  # fmt: skip
ENDINGS = [
    "before the end of the month", "after a long discussion", "with help from the engineers",
    "because the customers asked for it", "during the spring", "without any delay",
    "as soon as the data arrived", "for the second time this year", "in the morning",
    "while the office was closed", "on behalf of the whole company", "to save some money",
    "despite the heavy rain", "just before sunset", "on a cold afternoon",
    "while the children slept", "after the storm had passed", "under a clear sky",
    "in less than an hour", "with great care", "before breakfast", "late at night",
    "during the summer holidays", "after lunch", "without telling anyone",
    "because the roads were icy", "for a good friend", "with a little luck",
    "at the last minute", "in front of the station", "near the old mill",
    "on the way home", "before the guests arrived", "while it was still dark",
    "as the bells rang", "in the middle of the week", "during the long drive",
    "when the market opened", "behind the town hall", "for the first time",
    "under the bright lights", "on a quiet Sunday", "after the concert",
    "before the snow came", "next to the river", "while the soup was cooking",
    "in the back garden", "at the end of the day", "with the help of a neighbour",
    "before anyone noticed",
]  # fmt: skip


def varied_script(minutes: float, seed: int = 11) -> str:
    """About ``minutes`` of speech from the phrases above, each sentence a new draw."""
    return sentences(minutes, seed, SUBJECTS, ACTIONS, ENDINGS)


def sentences(minutes: float, seed: int, *parts: list[str]) -> str:
    """Sentences of one phrase from each of ``parts``, drawn with ``seed``, until about
    ``minutes`` of speech (espeak-ng says about 172 words a minute)."""
    rng = random.Random(seed)
    drawn, words = [], 0
    while words < minutes * 172:
        sentence = " ".join(rng.choice(part) for part in parts) + "."
        drawn.append(sentence)
        words += len(sentence.split())
    return " ".join(drawn)
