"""Parses a /metrics body the way the Prometheus project's own Python client does.

Usage: python3 tests/metrics_parse_check.py text|openmetrics < BODY
`text` uses prometheus_client.parser (the Prometheus text format 0.0.4),
`openmetrics` prometheus_client.openmetrics.parser (OpenMetrics 1.0, which
rejects a body without `# EOF`). Prints the families as JSON, one object
each: name and type as the parser reports them, every sample with its
name, labels and value (as text, so NaN and +Inf survive JSON). Exits 1
with the parser's complaint when it rejects the body.
"""

import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("text", "openmetrics"):
        print(__doc__, file=sys.stderr)
        return 2
    parse = parse_text if sys.argv[1] == "text" else parse_openmetrics
    body = sys.stdin.read()
    try:
        families = [
            {
                "name": family.name,
                "type": family.type,
                "samples": [
                    {
                        "name": sample.name,
                        "labels": dict(sample.labels),
                        "value": repr(float(sample.value)),
                    }
                    for sample in family.samples
                ],
            }
            for family in parse(body)
        ]
    except Exception as e:  # the parsers raise ValueError and friends
        print(f"{sys.argv[1]} parser rejects the body: {e!r}", file=sys.stderr)
        return 1
    json.dump(families, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
