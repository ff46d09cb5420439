"""The deterministic answerer of `surg ask` on the hand-written case."""

from __future__ import annotations

import pytest

from ml_models.answers import answer
from ml_models.errors import InputError
from surg_assets_tests.test_cognition.cases import hand_analysis


@pytest.mark.parametrize(
    ("question", "text", "citations"),
    [
        (
            "Which instrument at 0:16?",
            "At 00:00:16 the grasper and hook are visible, during Calot triangle dissection.",
            ["00:00:16"],
        ),
        (
            "what was going on at 71 s",
            # The grasper's second appearance ends at 70 s.
            "At 00:01:11 no instrument is visible, during Gallbladder dissection "
            "(video events: out of body).",
            ["00:01:11"],
        ),
        (
            "How long was the Calot triangle dissection?",
            "Calot triangle dissection lasted 40 s, 00:00:10-00:00:40, 00:01:20-00:01:30, "
            "in 2 separate stretches.",
            ["00:00:10", "00:00:40", "00:01:20", "00:01:30"],
        ),
        (
            "how long did clipping take",
            "Clipping and cutting lasted 10 s, 00:00:40-00:00:50.",
            ["00:00:40", "00:00:50"],
        ),
        (
            "When was the clipper first used?",
            "The clipper was first seen at 00:00:02 (during Preparation); visible 10 s in all "
            "over 2 appearances, from 00:00:02 to 00:00:48.",
            ["00:00:02", "00:00:48"],
        ),
        (
            "when was the hook last used",
            "The hook was last seen at 00:00:38 (during Calot triangle dissection); visible 26 s "
            "in all over 1 appearance, from 00:00:12 to 00:00:38.",
            ["00:00:38", "00:00:12"],
        ),
        (
            "when was the irrigator first used?",
            "The irrigator was not detected in this case.",
            [],
        ),
    ],
)
def test_common_questions(question: str, text: str, citations: list[str]) -> None:
    reply = answer(question, hand_analysis())
    assert reply.text == text
    assert reply.citations == citations


def test_what_happened_between_two_times() -> None:
    reply = answer("What happened between 0:25 and 0:45?", hand_analysis())
    assert reply.text.startswith("Between 00:00:25 and 00:00:45: phases: ")
    assert "Calot triangle dissection (00:00:25-00:00:40)" in reply.text
    assert "Clipping and cutting (00:00:40-00:00:45)" in reply.text
    assert "grasper from 00:00:25 (5 s visible)" in reply.text
    assert "hook from 00:00:25 (13 s visible)" in reply.text
    assert "clipper from 00:00:42 (3 s visible)" in reply.text
    assert "out of body at 00:00:30" in reply.text
    assert {"00:00:25", "00:00:45", "00:00:40", "00:00:42", "00:00:30"} == set(reply.citations)
    later = answer("what happened from 1:05 to 1:25", hand_analysis())
    assert "anomalies: " in later.text and "unexpected phase order" in later.text


@pytest.mark.parametrize(
    ("question", "message"),
    [
        ("is the patient ok?", "not understood"),
        ("which instrument at 2:30?", "outside the video"),
    ],
)
def test_questions_it_cannot_answer_are_the_users_to_rephrase(question: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        answer(question, hand_analysis())
