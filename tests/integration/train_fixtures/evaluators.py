"""Evaluators for training tests on random tiny models (whose text is gibberish)."""


def spread(completion: str, **row) -> float:
    """A graded score with spread on any text: the share of vowels among letters."""
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


def half_constant(completion: str, ground_truth=None, **row) -> float:
    """Constant for even answers (zero-variance groups), spread for odd ones."""
    if int(ground_truth) % 2 == 0:
        return 0.5
    return spread(completion)


def constant(completion: str, **row) -> float:
    return 1.0


def broken(completion: str, **row) -> float:
    raise ValueError("the evaluator is broken")
