"""Generate the reference pages when the site is built (run by the mkdocs-gen-files plugin).

- ``reference/params.md``: every ``params.yaml`` key, from the schema params are validated
  against (``hdmap_ad.config.params_schema``: the YAML schema with the gate enum and the
  method options filled in from the code);
- ``reference/cli.md``: every ``python -m hdmap_ad`` step and its options, from the argparse
  parser (``hdmap_ad.cli.build_parser``).

Nothing here is committed as text, so the reference cannot drift from the code. The two
renderers are plain functions (``params_markdown``, ``cli_markdown``) that tests import.
"""

from __future__ import annotations

import argparse
from typing import Any

PARAMS_PAGE = "reference/params.md"
CLI_PAGE = "reference/cli.md"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _type(node: dict[str, Any]) -> str:
    """The node's JSON type(s), ``or null`` last; enums and consts name no type."""
    types = node.get("type")
    if types is None:
        if "enum" in node or "const" in node:
            return ""
        if "oneOf" in node:
            return " or ".join(filter(None, (_type(n) for n in node["oneOf"])))
        return "any"
    types = [types] if isinstance(types, str) else list(types)
    names = [t for t in types if t != "null"] + [t for t in types if t == "null"]
    text = " or ".join(names)
    if "array" in types and isinstance(node.get("items"), dict):
        item = _type(node["items"]) or "value"
        text = text.replace("array", f"list of {item}", 1)
    return text


def _constraints(node: dict[str, Any]) -> list[str]:
    """Allowed values and bounds of one node, as short phrases."""
    out = []
    if "enum" in node:
        out.append("one of " + ", ".join(_code(v) for v in node["enum"]))
    if "const" in node:
        out.append("exactly " + _code(node["const"]))
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                      ("exclusiveMaximum", "<")):
        if key in node:
            out.append(f"{word} {node[key]}")
    if "multipleOf" in node:
        out.append(f"a multiple of {node['multipleOf']}")
    if "not" in node and "const" in node["not"]:
        out.append(f"not {_code(node['not']['const'])}")
    if "pattern" in node:
        out.append(f"matches `{node['pattern']}`")
    if "minItems" in node:
        out.append(f"at least {node['minItems']} item{'s' if node['minItems'] != 1 else ''}")
    if "maxItems" in node:
        out.append(f"at most {node['maxItems']} items")
    if node.get("uniqueItems"):
        out.append("no repeats")
    if "minProperties" in node:
        out.append(f"at least {node['minProperties']} entry")
    if "propertyNames" in node and "pattern" in node["propertyNames"]:
        out.append(f"names match `{node['propertyNames']['pattern']}`")
    items = node.get("items")
    if isinstance(items, dict) and "properties" not in items:
        out += [f"items: {c}" for c in _constraints(items)]
    if "oneOf" in node:
        out += [c for alt in node["oneOf"] for c in _constraints(alt)]
    if "default" in node:
        out.append(f"default {_code(node['default'])}")
    return out


def _condition(branch_if: dict[str, Any]) -> str:
    """``if: {properties: {name: {const: ae}}}`` -> ``name: ae``."""
    parts = []
    for key, sub in (branch_if.get("properties") or {}).items():
        if "const" in sub:
            parts.append(f"{key}: {sub['const']}")
    if "not" in branch_if:
        inner = _condition(branch_if["not"])
        missing = branch_if["not"].get("required", [])
        if inner:
            parts.append(f"not ({inner})")
        elif missing:
            parts.append(", ".join(missing) + " left out")
    return ", ".join(parts)


def _inline_refs(node: Any, definitions: dict[str, Any]) -> Any:
    """The schema with every ``#/definitions/...`` reference replaced by its target."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = definitions[node["$ref"].split("/")[-1]]
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _inline_refs({**target, **rest}, definitions)
        return {k: _inline_refs(v, definitions) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, definitions) for v in node]
    return node


def schema_rows(schema: dict[str, Any]) -> list[dict[str, str]]:
    """One row per key of the schema, depth first: ``key`` (dotted path, ``<key>`` for a
    name you choose), ``type``, ``allowed``, ``required`` (``yes``, ``if <condition>`` or
    empty), ``when`` (the condition of a conditional block), ``note`` (its description)."""
    schema = _inline_refs(schema, schema.get("definitions", {}))
    rows: list[dict[str, str]] = []

    def visit(node: dict[str, Any], path: str, required: str, when: str) -> None:
        if path:
            rows.append({"key": path, "type": _type(node),
                         "allowed": "; ".join(_constraints(node)), "required": required,
                         "when": when, "note": node.get("description", "")})
        prefix = f"{path}." if path else ""
        needed = {key: "yes" for key in node.get("required", [])}
        if "if" in node and "then" in node:  # keys required only under a condition
            cond = _condition(node["if"]) or "a condition holds"
            for key in node["then"].get("required", []):
                needed.setdefault(key, f"if {cond}")
        for key, sub in (node.get("properties") or {}).items():
            visit(sub, f"{prefix}{key}", needed.get(key, ""), when)
        for pattern in node.get("patternProperties") or {}:
            rows.append({"key": f"{prefix}{pattern}", "type": "any", "allowed":
                         f"keys matching `{pattern}`, not validated", "required": "",
                         "when": when, "note": ""})
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            visit(extra, f"{prefix}<key>", "", when)
        items = node.get("items")
        if isinstance(items, dict) and "properties" in items:
            visit(items, f"{path}[]", "", when)
        for branch in node.get("allOf") or []:
            if "if" in branch and "then" in branch:
                cond = _condition(branch["if"])
                then = branch["then"]
                for key, sub in (then.get("properties") or {}).items():
                    if key in (node.get("properties") or {}):
                        continue  # the discriminating key, listed once above
                    visit(sub, f"{prefix}{key}",
                          "yes" if key in then.get("required", []) else "", cond)

    visit(schema, "", "", "")
    return rows


def params_markdown(schema: dict[str, Any]) -> str:
    """The params reference page from the schema params are validated against."""
    lines = [
        "# params.yaml keys",
        "",
        "Generated when the site is built from the schema `params.yaml` is validated against "
        "(`src/hdmap_ad/schemas/params.schema.yaml`, with the gate names and the method options "
        "filled in from the code: `hdmap_ad.config.params_schema`). `<key>` is a name you "
        "choose (a backbone, an experiment, a hypothesis); `[]` is an item of a list. "
        "*When* names the block a key belongs to (a method's options apply under its "
        "`name`). What the keys mean: [params.yaml](../guide/params.md); method options with "
        "their defaults and docs: [the method table](../guide/methods.md#the-method-table).",
        "",
    ]
    if schema.get("additionalProperties") is False:
        lines += ["Keys not listed here are refused, naming the key.", ""]
    rows = schema_rows(schema)
    with_notes = any(r["note"] for r in rows)
    head = ["key", "type", "allowed", "required", "when"] + (["description"] if with_notes
                                                               else [])
    top = None
    for row in rows:
        section = row["key"].split(".")[0].split("[")[0]
        if section != top:
            top = section
            title = (f"Keys matching `{section}`" if section.startswith("^")
                     else f"`{section}`")
            lines += ["", f"## {title}", "", "| " + " | ".join(head) + " |",
                      "|---" * len(head) + "|"]
        cells = [f"`{row['key']}`", row["type"], row["allowed"], row["required"],
                 f"`{row['when']}`" if row["when"] else ""]
        if with_notes:
            cells.append(row["note"])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _steps(parser: argparse.ArgumentParser) -> list[tuple[str, list[str], str,
                                                          argparse.ArgumentParser]]:
    """``(name, aliases, help, parser)`` of every sub-command, in the parser's order."""
    out = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        seen: dict[int, int] = {}
        for name, sub in action.choices.items():
            if id(sub) in seen:  # an alias of a step already listed
                out[seen[id(sub)]][1].append(name)
                continue
            seen[id(sub)] = len(out)
            out.append((name, [], helps.get(name, ""), sub))
    return out


def _option_row(action: argparse.Action) -> list[str]:
    flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
    if action.nargs in ("+", "*"):
        flags += " (one or more)" if action.nargs == "+" else " (any number)"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        value = "flag"
    elif action.choices:
        value = " \\| ".join(f"`{c}`" for c in action.choices)
    else:
        value = "value"
    required = "yes" if action.required else ""
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or required else _code(default)
    return [flags, value, required, shown, action.help or ""]


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """The CLI reference page from the argparse parser: one section per step."""
    steps = _steps(parser)
    lines = [
        "# CLI steps",
        "",
        f"Generated when the site is built from the argparse parser "
        f"(`hdmap_ad.cli.build_parser()`). Every Snakemake rule calls one step: "
        f"`{parser.prog} <step> ...`; `{parser.prog} <step> --help` prints the same. Bad "
        f"input exits with status 2 and one line naming the file or key.",
        "",
        "| step | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`{name}`](#{name}) | {_cell(text)} |" for name, _, text, _ in steps]
    for name, aliases, text, sub in steps:
        lines += ["", f"## `{name}` {{#{name}}}", "", text + ".", ""]
        if aliases:
            lines += ["Also called " + ", ".join(f"`{a}`" for a in aliases) + ".", ""]
        usage = " ".join(sub.format_usage().split())
        lines += ["```", usage.removeprefix("usage: "), "```", ""]
        actions = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)
                   and a.help != argparse.SUPPRESS]
        if actions:
            lines += ["| option | value | required | default | meaning |",
                      "|---|---|---|---|---|"]
            lines += ["| " + " | ".join(_cell(c) for c in _option_row(a)) + " |"
                      for a in actions]
    return "\n".join(lines) + "\n"


def main() -> None:
    import mkdocs_gen_files

    from hdmap_ad.cli import build_parser
    from hdmap_ad.config import params_schema

    with mkdocs_gen_files.open(PARAMS_PAGE, "w") as f:
        f.write(params_markdown(params_schema()))
    with mkdocs_gen_files.open(CLI_PAGE, "w") as f:
        f.write(cli_markdown(build_parser()))


if __name__ in ("__main__", "<run_path>"):  # mkdocs-gen-files runs it with runpy.run_path
    main()
