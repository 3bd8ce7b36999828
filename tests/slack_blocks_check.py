"""Checks Slack messages the way Slack's own Python SDK models them.

Usage: python3 tests/slack_blocks_check.py DIR
Every DIR/*.json is one incoming-webhook message. Each must have a string
`text` and `blocks` that slack_sdk.models.blocks parses (no unknown type,
nothing dropped on the way) and validates (Slack's length limits), of the
types the watchdog uses: header (plain_text), section and context (mrkdwn),
divider. Prints every problem; exits 1 if there is any.
"""

import json
import pathlib
import sys

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

ALLOWED = {"header", "section", "context", "divider"}
MAX_BLOCKS = 50


def text_objects(block):
    """The text objects of a block, with where they sit."""
    kind = block.get("type")
    if kind == "header":
        yield "text", block.get("text"), "plain_text"
    elif kind == "section":
        if "text" in block:
            yield "text", block["text"], "mrkdwn"
        for i, field in enumerate(block.get("fields", [])):
            yield f"fields[{i}]", field, "mrkdwn"
    elif kind == "context":
        for i, element in enumerate(block.get("elements", [])):
            yield f"elements[{i}]", element, "mrkdwn"


def check(path):
    problems = []
    message = json.loads(path.read_text())
    if not isinstance(message.get("text"), str) or not message["text"]:
        problems.append("`text` must be a non-empty string")
    blocks = message.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        return problems + ["`blocks` must be a non-empty list"]
    if len(blocks) > MAX_BLOCKS:
        problems.append(f"{len(blocks)} blocks, more than {MAX_BLOCKS}")
    for i, raw in enumerate(blocks):
        where = f"blocks[{i}] ({raw.get('type')})"
        if raw.get("type") not in ALLOWED:
            problems.append(f"{where}: type not one of {sorted(ALLOWED)}")
            continue
        block = Block.parse(raw)
        if block is None:
            problems.append(f"{where}: slack_sdk does not know this block")
            continue
        try:
            block.validate_json()
        except SlackObjectFormationError as e:
            problems.append(f"{where}: rejected by slack_sdk: {e}")
            continue
        if block.to_dict() != raw:
            problems.append(
                f"{where}: slack_sdk round trip differs (unknown or misspelt keys)\n"
                f"  sent:   {json.dumps(raw, ensure_ascii=False)}\n"
                f"  parsed: {json.dumps(block.to_dict(), ensure_ascii=False)}"
            )
        for name, obj, want in text_objects(raw):
            if not isinstance(obj, dict) or obj.get("type") != want:
                problems.append(f"{where}.{name}: must be a {want} text object")
            elif not isinstance(obj.get("text"), str) or not obj["text"]:
                problems.append(f"{where}.{name}: text must be a non-empty string")
    return problems


def main():
    directory = pathlib.Path(sys.argv[1])
    files = sorted(directory.glob("*.json"))
    if not files:
        print(f"no messages in {directory}")
        return 1
    failed = 0
    for path in files:
        problems = check(path)
        if problems:
            failed += 1
            print(f"{path.name}:")
            for p in problems:
                print(f"  {p}")
    print(f"{len(files) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
