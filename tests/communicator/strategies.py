"""Hypothesis strategies for messages, shared by the codec and definition tests."""

from __future__ import annotations

from hypothesis import strategies as st

from communicator import Message
from communicator.wire._message import COMMAND_PATTERN, NAME_PATTERN

names = st.from_regex(rf"\A{NAME_PATTERN}\Z", fullmatch=True).filter(lambda s: len(s) <= 20)
commands = st.from_regex(rf"\A{COMMAND_PATTERN}\Z", fullmatch=True).filter(lambda s: len(s) <= 20)
#: Values lean on the characters the text form must escape or quote.
values = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(';="\\\n\r =<>:/*{} ')),
        st.characters(exclude_categories=("Cs",)),
    ),
    max_size=30,
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """Any valid message."""
    return Message(
        command=draw(commands),
        server=draw(st.one_of(st.just(""), st.just("*"), names)),
        service=draw(st.one_of(st.just(""), st.sampled_from(["*", "?", "."]), names)),
        sent_from_server=draw(st.one_of(st.just(""), names)),
        sent_from_service=draw(st.one_of(st.just(""), names)),
        parameters=draw(st.dictionaries(names, values, max_size=6)),
    )
