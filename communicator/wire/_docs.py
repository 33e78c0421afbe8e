"""Render message definitions as Markdown, so docs/messages.md cannot drift from them."""

from __future__ import annotations

from communicator.wire._definitions import (
    MessageDefinition,
    MessageDefinitions,
    ParameterDefinition,
)

BEGIN_MARK = "<!-- BEGIN GENERATED: deployctl messages docs -->"
END_MARK = "<!-- END GENERATED -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _parameter_rows(parameters: dict[str, ParameterDefinition]) -> list[str]:
    rows = ["| parameter | value | required | description |", "|---|---|---|---|"]
    for name, spec in parameters.items():
        rows.append(
            f"| `{name}` | `{_cell(spec.value.describe())}` | {'yes' if spec.required else 'no'} "
            f"| {_cell(spec.description)} |"
        )
    return rows


def _command_section(definition: MessageDefinition) -> list[str]:
    lines = [f"### {definition.command}", "", definition.description, ""]
    facts = [f"broadcast: {'yes' if definition.broadcast else 'no'}"]
    if definition.reply:
        facts.append(f"answered with [{definition.reply}](#{definition.reply.lower()})")
    lines += ["; ".join(facts) + ".", ""]
    if definition.parameters:
        lines += [*_parameter_rows(definition.parameters), ""]
    else:
        lines += ["No parameters of its own.", ""]
    return lines


def render_definitions(definitions: MessageDefinitions) -> str:
    """The reference part of docs/messages.md: global parameters, then every command."""
    lines = [BEGIN_MARK, "", "### Global parameters", ""]
    lines += [*_parameter_rows(definitions.global_parameters), ""]
    lines += ["Commands: " + ", ".join(f"[{c}](#{c.lower()})" for c in definitions.commands), ""]
    for command in definitions.commands:
        lines += _command_section(definitions[command])
    lines.append(END_MARK)
    return "\n".join(lines) + "\n"


def replace_generated(document: str, generated: str) -> str:
    """Put ``generated`` between the markers of ``document``.

    Raises:
        ValueError: The document lacks the markers.
    """
    start = document.find(BEGIN_MARK)
    end = document.find(END_MARK)
    if start < 0 or end < start:
        raise ValueError(f"the document has no {BEGIN_MARK} ... {END_MARK} section")
    return document[:start] + generated.rstrip("\n") + document[end + len(END_MARK) :]
