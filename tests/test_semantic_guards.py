"""Each guard of the semantic tier is a named rule; these pin what each one refuses and lets pass."""

from __future__ import annotations

import pytest

from r1proxy.cache.semantic.guards import RULES, check, hard_tokens, rule_direction, rule_hard_tokens, rule_polarity

T = 0.95


def refused_by(new: str, source: str, similarity: float = 0.99) -> str:
    v = check(new, source, similarity, T)
    return "" if v.ok else v.rule


def test_rules_are_named_and_run_in_order() -> None:
    assert RULES == ("cosine", "hard_tokens", "polarity", "direction")
    assert refused_by("Add a --verbose flag to cli.py", "Add a --verbose flag to cli.py", 0.949) == "cosine"
    assert refused_by("Add a --verbose flag to cli.py", "Add a --verbose flag to cli.py", 0.95) == ""
    # several rules would refuse: the first one in RULES order is reported
    assert refused_by("Remove the --quiet flag", "Add the --verbose flag") == "hard_tokens"


@pytest.mark.parametrize(("a", "b", "kind"), [
    ("Set the timeout to 30 seconds", "Set the timeout to 60 seconds", "n:"),
    ("Set the timeout to 30 seconds", "Set the timeout to 30 milliseconds", "u:"),
    ("Limit uploads to 10 MB", "Limit uploads to 10 GB", "u:"),
    ("Fix the bug in cli.py", "Fix the bug in main.py", "p:"),
    ("Fix the bug in src/app/views.py", "Fix the bug in src/api/views.py", "p:"),
    ("Rename getUserName", "Rename getUserId", "id:"),
    ("Explain parse_config", "Explain load_config", "id:"),
    ("Explain what flush() does", "Explain what close() does", "id:"),
    ('Print "hello world"', 'Print "hello there"', "q:"),
    ("Add a --verbose flag", "Add a --quiet flag", "f:"),
    ("Fetch https://example.com/a", "Fetch https://example.com/b", "url:"),
    ("Write it in Python", "Write it in Rust", "t:"),
    ("Upgrade to 1.2.3", "Upgrade to 1.2.4", "n:"),
])
def test_hard_tokens_must_be_the_same(a: str, b: str, kind: str) -> None:
    reason = rule_hard_tokens(a, b)
    assert reason and kind in reason
    assert rule_hard_tokens(a, a) == ""


@pytest.mark.parametrize(("a", "b"), [
    ("Retry up to three times", "Retry up to 3 times"),  # number words are numbers
    ("Set the timeout to 30 seconds", "Set the timeout to 30 s"),  # unit spellings
    ("Limit uploads to 10MB", "Limit uploads to 10 megabytes"),
    ("Add a --verbose flag to cli.py", "Add a verbose option to cli.py"),  # a flag = its bare name
    ("Round to 1,000", "Round to 1000"),
])
def test_hard_tokens_in_other_spellings_are_the_same(a: str, b: str) -> None:
    assert rule_hard_tokens(a, b) == "", sorted(hard_tokens(a) ^ hard_tokens(b))


@pytest.mark.parametrize(("a", "b"), [
    ("Turn on dark mode", "Turn off dark mode"),
    ("Enable caching", "Disable caching"),
    ("Add a dark theme toggle", "Remove the dark theme toggle"),
    ("Increase the limit", "Decrease the limit"),
    ("Sort in ascending order", "Sort in descending order"),
    ("Run the linter before every commit", "Run the linter after every commit"),
    ("Add a max length", "Add a min length"),
    ("Show the spinner", "Hide the spinner"),
    ("Remove unused imports", "Remove used imports"),  # prefix antonym
    ("Make the sidebar collapsible", "Make the sidebar not collapsible"),  # negation
    ("Cache the responses", "Do not cache the responses"),
    ("Use dark mode", "Use light mode"),
    ("Read the settings", "Write the settings"),
    ("Encrypt the tokens", "Decrypt the tokens"),
    ("Log incoming requests", "Log outgoing requests"),
    ("Compress files older than a week", "Compress files newer than a week"),
    ("Retry failed requests", "Retry successful requests"),
    ("Show only errors", "Show errors"),
])
def test_polarity_flips_are_refused(a: str, b: str) -> None:
    assert rule_polarity(a, b), (a, b)
    assert rule_polarity(b, a), (b, a)


@pytest.mark.parametrize(("a", "b"), [
    ("Remove the unused imports", "Delete the unused imports"),
    ("Add a test", "Insert a test"),
    ("Enable dark mode", "Activate dark mode"),
    ("Turn on dark mode", "Switch on dark mode"),
    ("Show the spinner", "Display the spinner"),
    ("Increase the limit", "Raise the limit"),
    ("Paginate the endpoint", "Add pagination to the endpoint"),  # the plain verb left out
    ("Open the file in read-only mode", "Open the file in read only mode"),
    ("Make the tests run faster", "Make the tests run quicker"),
])
def test_synonyms_of_the_same_polarity_are_not_a_flip(a: str, b: str) -> None:
    assert rule_polarity(a, b) == ""
    assert rule_polarity(b, a) == ""


@pytest.mark.parametrize(("a", "b"), [
    ("Convert celsius to fahrenheit", "Convert fahrenheit to celsius"),
    ("Sort from highest to lowest", "Sort from lowest to highest"),
    ("Migrate the project from JavaScript to TypeScript", "Migrate the project from TypeScript to JavaScript"),
    ("Replace print statements with logging calls", "Replace logging calls with print statements"),
    ("Use tabs instead of spaces", "Use spaces instead of tabs"),
    ("Translate the messages to German", "Translate the messages from German"),
    ("Rename foo to bar", "Rename bar to foo"),
])
def test_reversed_directions_are_refused(a: str, b: str) -> None:
    assert rule_direction(a, b), (a, b)
    assert rule_direction(b, a), (b, a)


@pytest.mark.parametrize(("a", "b"), [
    ("Use tabs instead of spaces for indentation", "Use tabs for indentation instead of spaces"),
    ("Sort the results in ascending order by date", "Sort the results by date in ascending order"),
    ("Convert this project from JavaScript to TypeScript", "Port this project from JavaScript to TypeScript"),
])
def test_the_same_direction_reworded_passes(a: str, b: str) -> None:
    assert rule_direction(a, b) == ""


def test_the_issues_examples() -> None:
    assert refused_by("add a verbose option to cli.py", "add a --verbose flag to cli.py") == ""
    assert refused_by("How do I turn off dark mode?", "How do I turn on dark mode?", 0.915) == "cosine"
    assert refused_by("How do I turn off dark mode?", "How do I turn on dark mode?", 0.999) == "polarity"
    assert refused_by("sort highest to lowest", "sort lowest to highest") == "direction"
